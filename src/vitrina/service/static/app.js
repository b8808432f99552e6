// The vitrina service page: plain JavaScript, no framework, no third-party requests.
// Every API call goes to this service (relative URLs, so a path prefix in front of it works)
// with the token the user typed, kept in sessionStorage for this tab only. Text from the
// service (labels, file names, person names) is only ever set with textContent, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "vitrina.token";
  const TOP_K = 5;
  const SEARCH_K = 8;
  const $ = (id) => document.getElementById(id);

  const state = {
    health: null, // the last /healthz answer
    file: null, // the photo being shown
    generation: 0, // bumped per photo: answers for an older photo are dropped
    faces: [], // faces of the current photo, as the service returned them
    blobUrls: [], // thumbnails and the preview, revoked when the next photo comes
  };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // ------------------------------------------------------------------ talking to the service

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(path, { method = "GET", form = null, as = "json" } = {}) {
    const headers = {};
    const t = token();
    if (t) headers.Authorization = `Bearer ${t}`;
    let response;
    try {
      response = await fetch(path, { method, headers, body: form });
    } catch (err) {
      throw new ApiError(0, "unreachable", `The service did not answer (${err.message}).`);
    }
    if (!response.ok) {
      let code = "http_error";
      let message = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.error) {
          code = body.error.code || code;
          message = body.error.message || message;
        }
      } catch (_) {
        // not JSON: keep the status line
      }
      throw new ApiError(response.status, code, message);
    }
    return as === "blob" ? response.blob() : response.json();
  }

  function photoForm(blob, filename, extra = {}) {
    const form = new FormData();
    form.append("image", blob, filename);
    for (const [k, v] of Object.entries(extra)) form.append(k, v);
    return form;
  }

  // What to tell the user about a failed call; 401/403 get a hint on what to do.
  function explain(err) {
    if (err.status === 401) return `The service refused the token: ${err.message} Enter a valid token above.`;
    if (err.status === 403) return `Not allowed with this token: ${err.message}`;
    if (err.status === 413) return `The photo is too large: ${err.message}`;
    return err.message;
  }

  // ------------------------------------------------------------------ small DOM helpers

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("aria-") || k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  function setStatus(id, text, kind = "") {
    const node = $(id);
    node.textContent = text;
    node.classList.toggle("error", kind === "error");
    node.classList.toggle("ok", kind === "ok");
  }

  function showAlert(text) {
    const node = $("alert");
    node.textContent = text;
    node.hidden = !text;
  }

  const percent = (p) => `${(100 * p).toFixed(1)}%`;

  // aria-busy on a section while its answer is on the way (screen readers wait for it).
  function busy(sectionId, on) {
    $(sectionId).setAttribute("aria-busy", on ? "true" : "false");
  }

  // ------------------------------------------------------------------ health and sections

  async function loadHealth() {
    let body;
    let degraded = false;
    try {
      const response = await fetch("healthz");
      body = await response.json();
      degraded = !response.ok;
    } catch (err) {
      setStatus("service-status", `The service did not answer: ${err.message}`, "error");
      return;
    }
    state.health = body;
    $("classify-section").hidden = !body.model;
    $("search-section").hidden = !body.index;
    $("faces-section").hidden = !body.gallery;
    $("people-section").hidden = !body.gallery;
    $("detect-section").hidden = !body.detector;
    const parts = [];
    if (body.model) parts.push(`classifier ${body.model}`);
    if (body.index) parts.push(`search index ${body.index}`);
    if (body.gallery) parts.push(`face gallery ${body.gallery}`);
    if (body.detector) parts.push(`detector ${body.detector}`);
    const what = parts.length ? `Serving: ${parts.join(" · ")}` : "No model, index, gallery or detector configured.";
    setStatus("service-status", degraded ? `Degraded (${body.status}). ${what}` : what, degraded ? "error" : "");
    if (body.version) $("version").textContent = `vitrina ${body.version}`;
    if (body.gallery && token()) loadPeople();
  }

  // ------------------------------------------------------------------ token

  function showTokenState() {
    $("token-state").textContent = token()
      ? "A token is set for this tab."
      : "No token set: the service will refuse requests if it requires one.";
  }

  function setupToken() {
    $("token").value = token();
    showTokenState();
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
      showTokenState();
      showAlert("");
      if (state.health && state.health.gallery) loadPeople();
      if (state.file) analyse(state.file);
    });
    $("token-clear").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("token").value = "";
      showTokenState();
      $("token").focus();
    });
  }

  // ------------------------------------------------------------------ choosing a photo

  function setupPhoto() {
    const zone = $("drop-zone");
    const input = $("photo");
    input.addEventListener("change", () => {
      if (input.files && input.files[0]) analyse(input.files[0]);
    });
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      zone.addEventListener(type, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (file) analyse(file);
    });
    // A photo dropped beside the zone must not make the browser navigate away from the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
  }

  function forgetBlobs() {
    for (const url of state.blobUrls) URL.revokeObjectURL(url);
    state.blobUrls = [];
  }

  async function analyse(file) {
    const generation = ++state.generation;
    state.file = file;
    state.faces = [];
    forgetBlobs();
    showAlert("");
    const img = $("preview-img");
    const url = URL.createObjectURL(file);
    state.blobUrls.push(url);
    img.src = url;
    img.alt = `The photo you chose: ${file.name}`;
    $("preview-caption").textContent = `${file.name} · ${(file.size / 1024).toFixed(0)} KiB`;
    $("preview").hidden = false;
    clearBoxes();
    clearObjects();

    const health = state.health || {};
    const jobs = [];
    if (health.model) jobs.push(classify(file, generation));
    if (health.index) jobs.push(search(file, generation));
    if (health.gallery) jobs.push(identify(file, generation));
    if (health.detector) jobs.push(detect(file, generation));
    if (!jobs.length) showAlert("This service has no model, index, gallery or detector to try the photo on.");
    await Promise.all(jobs);
  }

  const current = (generation) => generation === state.generation;

  // ------------------------------------------------------------------ classify

  async function classify(file, generation) {
    setStatus("classify-status", "Classifying…");
    $("classes").replaceChildren();
    busy("classify-section", true);
    try {
      const r = await api(`v1/classify?top_k=${TOP_K}`, { method: "POST", form: photoForm(file, file.name) });
      if (!current(generation)) return;
      setStatus("classify-status", `${r.label} (${percent(r.confidence)}) · model ${r.model}, backend ${r.backend}`, "ok");
      const rows = r.top.map((t, i) => {
        const bar = el("span", { class: "bar", "aria-hidden": "true" });
        bar.style.setProperty("--share", String(Math.max(0, Math.min(1, t.probability))));
        return el(
          "li",
          { class: i === 0 ? "top" : "" },
          el("span", { class: "label", text: t.label }),
          el("span", { class: "track", "aria-hidden": "true" }, bar),
          el("span", { class: "value", text: percent(t.probability) }),
        );
      });
      $("classes").replaceChildren(...rows);
    } catch (err) {
      if (current(generation)) setStatus("classify-status", explain(err), "error");
    } finally {
      if (current(generation)) busy("classify-section", false);
    }
  }

  // ------------------------------------------------------------------ search

  async function search(file, generation) {
    setStatus("search-status", "Searching…");
    $("hits").replaceChildren();
    busy("search-section", true);
    try {
      const r = await api(`v1/search?k=${SEARCH_K}`, { method: "POST", form: photoForm(file, file.name) });
      if (!current(generation)) return;
      setStatus("search-status", r.hits.length ? `${r.hits.length} nearest images` : "The index is empty.", "ok");
      const items = r.hits.map((hit) => {
        const how = hit.similarity != null ? `similarity ${hit.similarity.toFixed(3)}` : `distance ${hit.distance.toFixed(3)}`;
        const img = el("img", {
          alt: `Similar image ${hit.rank}: ${hit.name}${hit.label ? `, ${hit.label}` : ""}`,
          loading: "lazy",
        });
        const caption = el(
          "figcaption",
          {},
          el("span", { class: "name", text: hit.name }),
          hit.label ? el("span", { class: "tag", text: hit.label }) : null,
          el("span", { class: "muted", text: how }),
        );
        loadThumbnail(img, hit.id, generation);
        return el("li", {}, el("figure", {}, img, caption));
      });
      $("hits").replaceChildren(...items);
    } catch (err) {
      if (current(generation)) setStatus("search-status", explain(err), "error");
    } finally {
      if (current(generation)) busy("search-section", false);
    }
  }

  // Thumbnails need the token, so an <img src> cannot fetch them: fetch, then show a blob URL.
  async function loadThumbnail(img, id, generation) {
    try {
      const blob = await api(`v1/search/items/${encodeURIComponent(id)}/thumbnail`, { as: "blob" });
      if (!current(generation)) return;
      const url = URL.createObjectURL(blob);
      state.blobUrls.push(url);
      img.src = url;
    } catch (err) {
      img.alt += ` (thumbnail unavailable: ${err.message})`;
      img.classList.add("missing");
    }
  }

  // ------------------------------------------------------------------ faces

  function clearBoxes() {
    for (const box of $("stage").querySelectorAll(".box")) box.remove();
  }

  async function identify(file, generation) {
    setStatus("faces-status", "Looking for faces…");
    $("faces").replaceChildren();
    busy("faces-section", true);
    try {
      const r = await api("v1/faces/identify", { method: "POST", form: photoForm(file, file.name) });
      if (!current(generation)) return;
      state.faces = r.faces;
      await drawFaces(r.faces);
      const known = r.faces.filter((f) => f.name !== "unknown").length;
      setStatus(
        "faces-status",
        r.faces.length ? `${r.faces.length} face(s), ${known} recognised` : "No face found in this photo.",
        "ok",
      );
      $("faces").replaceChildren(...r.faces.map((face, i) => faceItem(face, i)));
    } catch (err) {
      if (current(generation)) setStatus("faces-status", explain(err), "error");
    } finally {
      if (current(generation)) busy("faces-section", false);
    }
  }

  // Boxes are placed in percent of the photo's own size, so they follow the shown size.
  async function drawFaces(faces) {
    clearBoxes();
    const img = $("preview-img");
    try {
      await img.decode();
    } catch (_) {
      return; // the browser cannot show this photo: list the faces without boxes
    }
    const w = img.naturalWidth;
    const h = img.naturalHeight;
    faces.forEach((face, i) => {
      const b = face.box;
      const box = el("div", { class: face.name === "unknown" ? "box unknown" : "box", "aria-hidden": "true" });
      box.style.left = `${(100 * b.left) / w}%`;
      box.style.top = `${(100 * b.top) / h}%`;
      box.style.width = `${(100 * (b.right - b.left)) / w}%`;
      box.style.height = `${(100 * (b.bottom - b.top)) / h}%`;
      box.append(el("span", { class: "box-label", text: `${i + 1}. ${face.name}` }));
      $("stage").append(box);
    });
  }

  function faceItem(face, i) {
    const detail = face.distance != null
      ? `distance ${face.distance.toFixed(3)} (threshold ${face.threshold.toFixed(3)}${face.calibrated ? ", calibrated" : ""})`
      : "no one enrolled yet";
    const button = el("button", { type: "button", class: "secondary", text: "Enroll as…" });
    button.setAttribute("aria-label", `Enroll face ${i + 1} as a person`);
    const status = el("p", { class: "muted", "aria-live": "polite" });
    const item = el(
      "li",
      {},
      el(
        "div",
        { class: "row spread" },
        el(
          "span",
          {},
          el("strong", { text: `${i + 1}. ` }),
          el("span", { class: face.name === "unknown" ? "name unknown" : "name", text: face.name }),
          el("span", { class: "muted", text: ` · ${detail}` }),
        ),
        button,
      ),
      status,
    );
    button.addEventListener("click", () => openEnroll(item, button, status, i));
    return item;
  }

  function openEnroll(item, button, status, index) {
    const form = $("enroll-template").content.firstElementChild.cloneNode(true);
    const input = form.querySelector("input");
    const close = () => {
      form.remove();
      button.hidden = false;
      button.focus();
    };
    form.querySelector(".cancel").addEventListener("click", close);
    form.addEventListener("keydown", (event) => {
      if (event.key === "Escape") close();
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = input.value.trim();
      if (!name) return;
      form.querySelector("button[type=submit]").disabled = true;
      status.classList.remove("error", "ok");
      status.textContent = `Enrolling ${name}…`;
      try {
        const image = await faceImage(index);
        const r = await api("v1/faces/enroll", { method: "POST", form: photoForm(image, "face.png", { name }) });
        status.textContent = r.added
          ? `Enrolled as ${r.name}${r.new_person ? " (new person)" : ""}.`
          : `${r.name} already has this face.`;
        status.classList.add("ok");
        form.remove();
        button.hidden = false;
        loadPeople();
      } catch (err) {
        status.textContent = err.status === 403 ? explain(err) : `Could not enroll ${name}: ${explain(err)}`;
        status.classList.add("error");
        form.querySelector("button[type=submit]").disabled = false;
        input.focus();
      }
    });
    button.hidden = true;
    item.append(form);
    input.focus();
  }

  // The service enrolls the largest face of a photo; with several faces, send a crop around
  // the chosen one (with a margin, so the detector finds it again) instead of the whole photo.
  async function faceImage(index) {
    if (state.faces.length <= 1) return state.file;
    const img = $("preview-img");
    const b = state.faces[index].box;
    const margin = 0.6 * Math.max(b.right - b.left, b.bottom - b.top);
    const left = Math.max(0, Math.floor(b.left - margin));
    const top = Math.max(0, Math.floor(b.top - margin));
    const right = Math.min(img.naturalWidth, Math.ceil(b.right + margin));
    const bottom = Math.min(img.naturalHeight, Math.ceil(b.bottom + margin));
    const canvas = el("canvas", { width: right - left, height: bottom - top });
    canvas.getContext("2d").drawImage(img, left, top, right - left, bottom - top, 0, 0, right - left, bottom - top);
    return new Promise((resolve, reject) =>
      canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("could not crop the face"))), "image/png"),
    );
  }

  // ------------------------------------------------------------------ objects

  // One hue per class (golden-ratio steps), as the annotated copies of `vitrina detect` draw them.
  const classColor = (index) => `hsl(${Math.round(((index * 0.618033988749895) % 1) * 360)}, 85%, 42%)`;

  function clearObjects() {
    for (const box of $("stage").querySelectorAll(".det-box")) box.remove();
  }

  async function detect(file, generation) {
    setStatus("detect-status", "Looking for objects…");
    $("objects").replaceChildren();
    busy("detect-section", true);
    try {
      const r = await api("v1/detect", { method: "POST", form: photoForm(file, file.name) });
      if (!current(generation)) return;
      await drawObjects(r);
      const counts = {};
      for (const b of r.boxes) counts[b.label] = (counts[b.label] || 0) + 1;
      const summary = Object.entries(counts).map(([label, n]) => `${n} ${label}`).join(", ");
      setStatus(
        "detect-status",
        r.boxes.length
          ? `${r.boxes.length} object(s): ${summary} · scores ≥ ${r.min_score} · ${r.detector}, backend ${r.backend}`
          : `Nothing found scoring ${r.min_score} or more.`,
        "ok",
      );
      $("objects").replaceChildren(
        ...r.boxes.map((b) => {
          const item = el(
            "li",
            {},
            el("span", { class: "swatch", "aria-hidden": "true" }),
            el("span", { class: "name", text: b.label }),
            el("span", {
              class: "muted",
              text: ` · score ${b.score.toFixed(2)} · (${Math.round(b.box.left)}, ${Math.round(b.box.top)}) – (${Math.round(b.box.right)}, ${Math.round(b.box.bottom)})`,
            }),
          );
          item.style.color = classColor(b.class_index);
          return item;
        }),
      );
    } catch (err) {
      if (current(generation)) setStatus("detect-status", explain(err), "error");
    } finally {
      if (current(generation)) busy("detect-section", false);
    }
  }

  // Placed in percent of the photo's own size (the service answers in its pixels).
  async function drawObjects(r) {
    clearObjects();
    const img = $("preview-img");
    try {
      await img.decode();
    } catch (_) {
      return; // the browser cannot show this photo: the list says what was found
    }
    const w = r.width || img.naturalWidth;
    const h = r.height || img.naturalHeight;
    r.boxes.forEach((b, i) => {
      const box = el("div", { class: "det-box", "aria-hidden": "true", "data-label": b.label });
      box.style.left = `${(100 * b.box.left) / w}%`;
      box.style.top = `${(100 * b.box.top) / h}%`;
      box.style.width = `${(100 * (b.box.right - b.box.left)) / w}%`;
      box.style.height = `${(100 * (b.box.bottom - b.box.top)) / h}%`;
      box.style.color = classColor(b.class_index);
      const label = el("span", { class: "box-label" }, el("span", { text: `${i + 1}. ${b.label} ${b.score.toFixed(2)}` }));
      box.append(label);
      $("stage").append(box);
    });
  }

  // ------------------------------------------------------------------ people

  async function loadPeople() {
    setStatus("people-status", "Loading…");
    busy("people-section", true);
    try {
      const r = await api("v1/faces/people");
      const items = r.people.map((p) =>
        el(
          "li",
          {},
          el("span", { class: "name", text: p.name }),
          el("span", { class: "muted", text: ` · ${p.templates} template${p.templates === 1 ? "" : "s"}` }),
        ),
      );
      $("people").replaceChildren(...items);
      setStatus("people-status", r.people.length ? `${r.people.length} enrolled` : "Nobody is enrolled yet.");
    } catch (err) {
      setStatus("people-status", explain(err), "error");
    } finally {
      busy("people-section", false);
    }
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    setupToken();
    setupPhoto();
    $("people-refresh").addEventListener("click", loadPeople);
    loadHealth();
  });
})();
