// Draws every chart of the page with plotly.js (served by the console itself) and marks it rendered with its
// number of data points, so tests and operators can tell an empty chart from one with data.
document.querySelectorAll(".chart").forEach(function (div) {
  var figure = JSON.parse(div.dataset.figure);
  var points = figure.data.reduce(function (n, trace) {
    var xs = trace.x || trace.y || [];
    return n + xs.filter(function (v) { return v !== null; }).length;
  }, 0);
  Plotly.newPlot(div, figure.data, figure.layout, {displayModeBar: false, responsive: true}).then(function () {
    div.dataset.points = String(points);
    div.dataset.rendered = "true";
  });
});
