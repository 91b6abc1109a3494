// MathJax 3 for pymdownx.arithmatex (generic mode): typeset only what arithmatex marked as math.
// The script itself is served from this site (assets/mathjax/), never from a CDN.
window.MathJax = {
  tex: {inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"},
  svg: {fontCache: "global"},
};
