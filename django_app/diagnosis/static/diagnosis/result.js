// The result page: the meter's widths and the heat map's opacity slider. Kept out of the template
// so that the Content-Security-Policy needs no inline script or style attribute.
(function () {
  document.querySelectorAll("[data-width]").forEach(function (el) { el.style.width = el.dataset.width + "%"; });
  document.querySelectorAll("[data-left]").forEach(function (el) { el.style.left = el.dataset.left + "%"; });
  var slider = document.getElementById("heatmap-opacity"), heat = document.getElementById("heatmap");
  if (slider && heat) slider.addEventListener("input", function () { heat.style.opacity = slider.value / 100; });
})();
