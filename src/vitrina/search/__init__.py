"""Search photos by image: a persistent faiss + SQLite index, near-duplicate groups, and
contact sheets / self-contained HTML pages of the results."""

from vitrina.search.index import (
    AUTO_HNSW_THRESHOLD,
    AddReport,
    Hit,
    Index,
    QueryResult,
    RemoveReport,
    SearchResults,
)

__all__ = [
    "AUTO_HNSW_THRESHOLD",
    "AddReport",
    "Hit",
    "Index",
    "QueryResult",
    "RemoveReport",
    "SearchResults",
]
