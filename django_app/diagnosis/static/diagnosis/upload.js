/* Upload page: drag and drop or file picker, previews, one request per image with a progress bar.
   Without JavaScript the same form posts all images at once and the server answers with pages. */
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) return;
  document.documentElement.classList.add("js");

  var input = form.querySelector("input[type=file]");
  var zone = document.getElementById("dropzone");
  var list = document.getElementById("previews");
  var button = document.getElementById("analyse-btn");
  var clearBtn = document.getElementById("clear-btn");
  var statusEl = document.getElementById("upload-status");
  var maxBytes = parseFloat(form.dataset.maxMb) * 1024 * 1024;
  var maxFiles = parseInt(form.dataset.maxFiles, 10);
  var csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  var items = [];
  var busy = false;
  var OK_EXT = /\.(jpe?g|png|dcm|dicom)$/i;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function sizeText(n) { return n < 1048576 ? Math.round(n / 1024) + " kB" : (n / 1048576).toFixed(1) + " MB"; }

  function refresh() {
    var pending = items.filter(function (it) { return it.state === "ready"; }).length;
    button.disabled = busy || pending === 0;
    button.textContent = busy ? "Analysing…" : (pending > 1 ? "Analyse " + pending + " images" : "Analyse");
    clearBtn.hidden = busy || items.length === 0;
  }

  function setState(it, state, text, link) {
    it.state = state;
    it.node.className = "preview is-" + state;
    it.stateEl.textContent = text;
    if (link) {
      it.stateEl.appendChild(document.createTextNode(" · "));
      var a = el("a", "", "View result");
      a.href = link;
      it.stateEl.appendChild(a);
    }
  }

  function add(files) {
    Array.prototype.forEach.call(files, function (file) {
      if (items.length >= maxFiles) { statusEl.textContent = "At most " + maxFiles + " images at a time."; return; }
      var it = { file: file, state: "ready" };
      var li = el("li", "preview is-ready");
      var pic = el("div", "preview-img");
      if (/^image\/(jpeg|png)$/.test(file.type)) {
        var img = el("img");
        img.alt = "Preview of " + file.name;
        img.src = URL.createObjectURL(file);
        img.onload = function () { URL.revokeObjectURL(img.src); };
        img.onerror = function () { URL.revokeObjectURL(img.src); pic.textContent = "NO PREVIEW"; };
        pic.appendChild(img);
      } else {
        pic.textContent = /\.(dcm|dicom)$/i.test(file.name) || file.type === "application/dicom" ? "DICOM" : "FILE";
      }
      var body = el("div", "preview-body");
      body.appendChild(el("span", "preview-name", file.name)).title = file.name;
      it.stateEl = body.appendChild(el("span", "preview-state", sizeText(file.size) + " · ready"));
      var bar = body.appendChild(el("div", "progress"));
      it.bar = bar.appendChild(el("span"));
      var remove = body.appendChild(el("button", "preview-remove", "Remove"));
      remove.type = "button";
      remove.onclick = function () {
        if (busy) return;
        items.splice(items.indexOf(it), 1);
        li.remove();
        refresh();
      };
      it.remove = remove;
      li.appendChild(pic);
      li.appendChild(body);
      list.appendChild(li);
      it.node = li;
      items.push(it);
      if (file.size === 0) setState(it, "error", "empty file: nothing to upload");
      else if (file.size > maxBytes) setState(it, "error", "too large: " + sizeText(file.size) + " (limit " + form.dataset.maxMb + " MB)");
      else if (!OK_EXT.test(file.name) && !/^image\/(jpeg|png)$/.test(file.type)) setState(it, "error", "not a JPEG, PNG or DICOM file");
    });
    statusEl.textContent = "";
    refresh();
  }

  function send(it) {
    return new Promise(function (resolve) {
      var data = new FormData();
      data.append("images", it.file, it.file.name);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action || window.location.href);
      xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
      xhr.setRequestHeader("X-CSRFToken", csrf);
      xhr.setRequestHeader("Accept", "application/json");
      setState(it, "working", "Uploading… 0%");
      it.remove.hidden = true;
      xhr.upload.onprogress = function (e) {
        if (!e.lengthComputable) return;
        var pct = Math.round(100 * e.loaded / e.total);
        it.bar.style.width = pct + "%";
        it.stateEl.textContent = "Uploading… " + pct + "%";
      };
      xhr.upload.onload = function () {
        it.bar.style.width = "";
        it.bar.className = "indeterminate";
        it.stateEl.textContent = "Analysing…";
      };
      xhr.onload = function () {
        it.bar.className = "";
        it.bar.style.width = "100%";
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        if (xhr.status === 200 && body && body.results && body.results.length) {
          var r = body.results[0];
          it.result = r;
          setState(it, "done", r.label + " · " + (100 * r.probability).toFixed(1) + "%", r.result_url);
        } else {
          var why = body && body.detail ? body.detail : "server error (" + xhr.status + ")";
          if (xhr.status === 403) why = "your session has expired: reload the page and sign in again";
          setState(it, "error", why);
        }
        resolve(it);
      };
      xhr.onerror = function () { setState(it, "error", "network error: the upload did not reach the server"); resolve(it); };
      xhr.send(data);
    });
  }

  input.addEventListener("change", function () { add(input.files); input.value = ""; });
  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.add("is-over"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.remove("is-over"); });
  });
  zone.addEventListener("drop", function (e) { if (e.dataTransfer && e.dataTransfer.files) add(e.dataTransfer.files); });
  clearBtn.addEventListener("click", function () { items = []; list.innerHTML = ""; statusEl.textContent = ""; refresh(); });

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var todo = items.filter(function (it) { return it.state === "ready"; });
    if (!todo.length) { statusEl.textContent = "Choose at least one image."; return; }
    busy = true;
    refresh();
    statusEl.textContent = "Working on " + todo.length + " image" + (todo.length > 1 ? "s" : "") + "…";
    todo.reduce(function (chain, it) { return chain.then(function () { return send(it); }); }, Promise.resolve())
      .then(function () {
        busy = false;
        var done = todo.filter(function (it) { return it.state === "done"; });
        if (todo.length === 1 && done.length === 1) { window.location.assign(done[0].result.result_url); return; }
        statusEl.textContent = done.length + " of " + todo.length + " analysed.";
        if (done.length) {
          var a = el("a", "", "See them in your history");
          a.href = form.dataset.historyUrl || "/history/";
          statusEl.appendChild(document.createTextNode(" "));
          statusEl.appendChild(a);
        }
        refresh();
      });
  });
  refresh();
})();
