#!/usr/bin/env bash
# Rebuild workflow/report/dvc-plots-offline.html: DVC's plots page with Vega, Vega-Lite and
# Vega-Embed inlined, so that `dvc plots show` renders with no network (DVC's default page
# loads them from a CDN). Needs npm and the npm registry; the output is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null \
  && for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}" --strip-components 1; done)
out=workflow/report/dvc-plots-offline.html
{
  echo '<!DOCTYPE html><html><head><meta charset="utf-8"><title>DVC plots</title>'
  echo '<!-- Vega 5.20.2, Vega-Lite 5.2.0, Vega-Embed 6.18.2 (BSD-3-Clause, the Vega project) inlined -->'
  for lib in vega-5.20.2/build/vega.min.js vega-lite-5.2.0/build/vega-lite.min.js vega-embed-6.18.2/build/vega-embed.min.js; do
    printf '<script type="text/javascript">\n'; cat "$tmp/$lib"; printf '\n</script>\n'
  done
  echo '<style>table{border-spacing:15px}</style></head><body>{plot_divs}</body></html>'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
