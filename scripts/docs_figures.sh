#!/usr/bin/env bash
# Regenerate docs/img/: the web page (the headless-browser test's screenshot), a route curve and a reproduce plot,
# all from the shipped data with tiny random models (so the numbers are at chance; the pictures show the layout).
# Needs /usr/bin/chromium + chromedriver for the page. Run from anywhere: bash scripts/docs_figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VISROUTE_CACHE="$tmp/cache"
V="$root/.venv/bin/visroute"
mkdir -p docs/img

echo "1/3 web page (tests/test_serve_browser.py)" >&2
VISROUTE_TEST_ARTIFACTS="$tmp/art" .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_serve_browser.py
cp "$tmp/art/serve-page.png" docs/img/web-page.png

echo "2/3 route curve (examples/grid-demo.yaml)" >&2
mkdir -p "$tmp/repo" && cp -r examples "$tmp/repo/examples" && ln -s "$(cd .. && pwd)/shared" "$tmp/shared"
(cd "$tmp/repo" && "$V" grid run examples/grid-demo.yaml --no-progress &&
  "$V" route build runs/grid-demo/records.parquet --out runs/table --split sample &&
  "$V" route train runs/table --router knn --out runs/router --target-share 0.3 &&
  "$V" route eval runs/table --router runs/router --out runs/report)
cp "$tmp/repo/runs/report/curve.png" docs/img/route-curve.png

echo "3/3 reproduce plot (seed000-router, tiny)" >&2
"$V" reproduce seed000-router --scale tiny --out "$tmp/reproduce" --no-progress || [ $? -eq 1 ]
cp "$tmp/reproduce/accuracy_cost.png" docs/img/reproduce-accuracy-cost.png
ls -l docs/img >&2
