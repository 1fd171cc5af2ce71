#!/usr/bin/env bash
# The README's pictures of `trident explain` (docs/explain-ner.png, docs/explain-translate.png):
# pages made on the tiny fixtures, shot with headless Chromium (Debian: apt install
# chromium-headless-shell), then reduced to 128 colours when Pillow is there ($FIXTURES_VENV, default .venv-fixtures).
#
#   scripts/explain-screenshots.sh [path/to/trident]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRIDENT="${1:-$ROOT/target/debug/trident}"
CHROMIUM="${TRIDENT_CHROMIUM:-$(command -v chromium-headless-shell || command -v chromium)}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cd "$ROOT"
"$TRIDENT" -q explain ner --device cpu -m weights/bert-tiny-ner -o "$TMP/ner.html" "Angela Merkel visited Paris on Monday."
"$TRIDENT" -q explain translate --device cpu -m weights/marian-tiny -o "$TMP/translate.html" "Le chat dort sur le canapé."
shot() {  # page, view, height, output
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="1000,$3" \
        --screenshot="$4" "file://$1$2" 2>/dev/null
}
shot "$TMP/ner.html" "" 2000 docs/explain-ner.png
shot "$TMP/translate.html" "#map=2&layer=1" 1950 docs/explain-translate.png
PY="${FIXTURES_VENV:-$ROOT/.venv-fixtures}/bin/python"
if [ -x "$PY" ] && "$PY" -c "import PIL" 2>/dev/null; then
    "$PY" - <<'PYEOF'
from PIL import Image
for name in ["docs/explain-ner.png", "docs/explain-translate.png"]:
    Image.open(name).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(name, optimize=True)
PYEOF
fi
ls -l docs/explain-ner.png docs/explain-translate.png
