"""What the gallery answers: people, enrolment reports, identifications, calibration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from vitrina.faces.decision import DecisionRule, OpenSetFigures, Uncertainty
from vitrina.faces.types import Box

__all__ = [
    "CalibrationReport",
    "EnrollReport",
    "Forgotten",
    "Identification",
    "Identifications",
    "Person",
    "Verification",
]

UNKNOWN = "unknown"


@dataclass
class Person:
    """One enrolled person: template count, the digests of the photos they came from, the
    chips on disk, and the mean pairwise distance of the templates (None with one)."""

    name: str
    templates: int
    photos: list[str] = field(default_factory=list)  # face keys: "<photo sha256>:<face index>"
    chips: list[Path] = field(default_factory=list)
    spread: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "templates": self.templates,
            "photos": self.photos,
            "chips": [str(c) for c in self.chips],
            "spread": self.spread,
        }


@dataclass
class EnrollReport:
    name: str
    added: list[str] = field(default_factory=list)  # photo paths
    already: list[tuple[str, str]] = field(default_factory=list)  # (photo, enrolled as person)
    no_face: list[str] = field(default_factory=list)
    several_faces: list[tuple[str, int, int]] = field(default_factory=list)  # (photo, n, chosen)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (photo, reason)
    new_person: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "new_person": self.new_person,
            "added": self.added,
            "already": [{"photo": p, "person": n} for p, n in self.already],
            "no_face": self.no_face,
            "several_faces": [
                {"photo": p, "faces": n, "chosen": i} for p, n, i in self.several_faces
            ],
            "unreadable": [{"photo": p, "error": e} for p, e in self.unreadable],
        }


@dataclass
class Forgotten:
    name: str
    templates: int
    chips: int


@dataclass
class Identification:
    """The decision for one face. ``name`` is the person or ``"unknown"``; ``person`` and
    ``distance`` are the nearest person whether named or not; ``threshold`` is the effective
    threshold for that person; ``enrolled`` is True when ``identify(enroll_unknown=True)``
    added this face as the new person ``name``."""

    photo: str
    face: int
    box: Box | None
    name: str
    person: str | None
    distance: float | None
    runner_up: str | None
    runner_up_distance: float | None
    threshold: float
    margin: float | None
    reason: str
    calibrated: bool
    threshold_source: str
    enrolled: bool = False
    detector: str = ""  # what found the face: "hog", "cnn", a cascade stage, "assumed"
    #: the aligned face chip ``(S, S, 3)`` uint8, for the notebook thumbnail (not serialised)
    chip: Any = field(default=None, repr=False, compare=False)

    @property
    def known(self) -> bool:
        return self.name != UNKNOWN

    def _row(self) -> list[Any]:
        from PIL import Image

        chip = Image.fromarray(self.chip) if self.chip is not None else None
        dist = "" if self.distance is None else f"{self.distance:.3f}"
        return [chip, self.name, self.photo, self.face, dist, self.reason]

    def _repr_html_(self) -> str:
        from vitrina.report.notebook import html_table

        return html_table(f"face {self.face}: {self.name}", _ID_HTML, [self._row()])

    def to_pandas(self) -> Any:
        """A one-row ``pandas.DataFrame`` of :meth:`to_dict` (the box as left/top/right/bottom)."""
        from vitrina.report.notebook import dataframe

        return dataframe([_flat(self)], _ID_COLUMNS)

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(float(v), 4)

        return {
            "photo": self.photo,
            "face": self.face,
            "box": self.box.to_dict() if self.box is not None else None,
            "detector": self.detector,
            "name": self.name,
            "person": self.person,
            "distance": r(self.distance),
            "runner_up": self.runner_up,
            "runner_up_distance": r(self.runner_up_distance),
            "threshold": r(self.threshold),
            "margin": r(self.margin),
            "reason": self.reason,
            "calibrated": self.calibrated,
            "threshold_source": self.threshold_source,
            "enrolled": self.enrolled,
        }


_ID_HTML = ("face", "name", "photo", "#", "distance", "why")
_ID_COLUMNS = (
    "photo", "face", "name", "person", "distance", "runner_up", "runner_up_distance",
    "threshold", "margin", "calibrated", "enrolled", "detector", "left", "top", "right", "bottom",
    "reason",
)  # fmt: skip
_SHOWN = 50


def _flat(i: Identification) -> dict[str, Any]:
    d = i.to_dict()
    box = d.pop("box") or {}
    return {**d, **{k: box.get(k) for k in ("left", "top", "right", "bottom")}}


class Identifications(list[Identification]):
    """:meth:`Gallery.identify`'s answer, one :class:`Identification` per face in photo order:
    a list that shows each face chip with its decision in a notebook and becomes a pandas
    table with :meth:`to_pandas`."""

    def _repr_html_(self) -> str:
        from vitrina.report.notebook import html_table

        known = sum(i.known for i in self)
        rows = [i._row() for i in self[:_SHOWN]]
        title = f"{len(self)} faces, {known} recognised"
        return html_table(title, _ID_HTML, rows, more=len(self) - len(rows))

    def to_pandas(self) -> Any:
        """One row per face: photo, face, name, person, distances, threshold, box, reason."""
        from vitrina.report.notebook import dataframe

        return dataframe([_flat(i) for i in self], _ID_COLUMNS)


class Verification(NamedTuple):
    same: bool
    distance: float
    threshold: float


@dataclass
class CalibrationReport:
    """Pairwise verification figures at ``far`` plus the open-set simulation: the chosen rule,
    the plain global threshold calibrated to the same FAR, and dlib's default 0.6."""

    far: float
    threshold: float  # pairwise verification threshold at far (also the rule's cap)
    tar: float
    eer: float
    n_genuine: int
    n_impostor: int
    n_people: int
    n_faces: int
    source: str  # "labelled" or "gallery"
    date: str
    rule: DecisionRule
    openset: OpenSetFigures
    plain: OpenSetFigures
    default: OpenSetFigures
    verification: Any = None  # the VerificationReport (ROC), not stored in gallery.json
    uncertainty: Uncertainty | None = None  # bootstrap over identities; None: not measured
    light_dims: int = 0  # light directions removed from every vector (0: none)
    light_faces: int = 0  # enrolled faces they were learned from

    def to_dict(self) -> dict[str, Any]:
        return {
            "far": self.far,
            "threshold": self.threshold,
            "tar": self.tar,
            "eer": self.eer,
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "n_people": self.n_people,
            "n_faces": self.n_faces,
            "source": self.source,
            "date": self.date,
            "rule": self.rule.to_dict(),
            "openset": self.openset.to_dict(),
            "plain": self.plain.to_dict(),
            "default": self.default.to_dict(),
            "uncertainty": None if self.uncertainty is None else self.uncertainty.to_dict(),
            "light_dims": self.light_dims,
            "light_faces": self.light_faces,
        }

    @property
    def warning(self) -> str | None:
        """A plain sentence when the calibration set is too small to promise ``far``."""
        return None if self.uncertainty is None else self.uncertainty.warning

    def lines(self) -> list[str]:
        """Human-readable summary, one figure per line."""

        def fig(label: str, f: OpenSetFigures) -> str:
            return (
                f"{label:<28} unknowns accepted {f.far:7.2%}   known named {f.named:7.2%}   "
                f"misnamed {f.misnamed:6.2%}   ({f.rule.describe()})"
            )

        out = [
            f"calibrated on {self.n_faces} faces of {self.n_people} people ({self.source}), "
            f"{self.n_genuine} genuine / {self.n_impostor} impostor pairs",
            f"verification: threshold {self.threshold:.4f} at FAR {self.far:g}: "
            f"TAR {self.tar:.2%}, EER {self.eer:.2%}",
        ]
        if self.light_dims:
            out.append(
                f"light: {self.light_dims} directions removed from every vector (learned from "
                f"{self.light_faces} enrolled faces relit from the left and the right)"
            )
        out += [
            f"open-set simulation (leave one identity out, {self.openset.n_unknown} unknown / "
            f"{self.openset.n_known} known probe trials):",
            fig("  chosen rule", self.openset),
            fig("  plain threshold, same FAR", self.plain),
            fig("  dlib default 0.6", self.default),
        ]
        if self.openset.n_known and self.openset.named == 0:
            out.append(
                f"WARNING: the chosen rule names none of the {self.openset.n_known} known faces "
                f"in the simulation: on {self.n_faces} faces of {self.n_people} people, keeping "
                f"strangers to FAR {self.far:g} refuses everyone. Calibrate on photos of more "
                "people (or ask for a larger --far)."
            )
        u = self.uncertainty
        if u is not None and u.rounds:
            out.append(
                f"on people left out ({u.rounds} resamples of the {u.n_people} people, "
                f"90% intervals): unknowns accepted {u.far[0]:.2%} ({u.far[1]:.2%}-"
                f"{u.far[2]:.2%}), known named {u.named[0]:.2%} ({u.named[1]:.2%}-"
                f"{u.named[2]:.2%})"
            )
            if u.term_support is not None:
                verdict = "kept" if u.term_kept else "not kept"
                out.append(
                    f"margin/spread term: named more than the plain threshold on "
                    f"{u.term_support:.0%} of the resamples: {verdict}"
                )
            out.append(f"WARNING: {u.warning}" if u.warning else f"FAR {self.far:g}: supported")
        return out
