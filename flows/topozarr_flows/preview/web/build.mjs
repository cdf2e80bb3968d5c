// Bundles the preview page into ../static (no CDN: maplibre-gl, zarr-layer, the colormap table and
// maplibre's worker, and the Natural Earth basemap as GeoJSON files, are all served with the page).
import { build } from 'esbuild'
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { basemapData } from './src/basemap-data.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const out = join(here, '..', 'static')

// Fixes to zarr-layer 0.5.0, made in the bundle (the text each replaces must be found exactly
// once, else the build fails: with another zarr-layer version, check whether each is still needed).
const PATCHES = [
  {
    // Vertices of a proj4 dataset (UTM, polar, ...) are projected from longitude/latitude to Web
    // Mercator on the GPU as log(tan(pi/4 + phi/2)) in single precision. GLSL leaves the precision of
    // tan/log open; in software WebGL (SwiftShader, headless Chromium) it is about 1e-5, so the data
    // sat 35 m south at 34N, 145 m at 45N, 40 m north at 9N, at every zoom (docs/viewing.md,
    // docs/repro/proj4-mercator). One Newton step on phi = 2 atan(exp(y)) - pi/2, whose exp/atan are
    // accurate there, brings it to about 1 m. ?exactmercator=0 keeps zarr-layer's own expression.
    find: '  float mercY_raw = log(tan((PI / 2.0 + phi) / 2.0));\n',
    replace: (found) => found + '${globalThis.__topozarrExactMercator === false ? "" : ' + JSON.stringify(
      '  { float e_ = exp(mercY_raw); mercY_raw -= (2.0 * atan(e_) - PI / 2.0 - phi) * (e_ + 1.0 / e_) / 2.0; }\n') + '}',
  },
  {
    // A longitude/latitude dataset's regions were chosen from the view's longitudes as they are: a view
    // across the antimeridian (west 120, east 240) loaded only the regions up to 180, so the world copy
    // beyond it stayed empty. Choose them for every 360-degree shift of the view that meets the data.
    find: '  getVisibleRegions(map) {\n',
    replace: () => `  getVisibleRegions(map) {
    const bounds = map.getBounds?.()?.toArray?.();
    if (!bounds || this.proj4def || !this.xyLimits || (this.crs && this.crs !== "EPSG:4326")) return this.visibleRegionsOfView(map);
    const [[west, south], [east, north]] = bounds;
    const { xMin, xMax } = this.xyLimits;
    const found = new Map();
    for (let k = Math.ceil((west - xMax) / 360); k <= Math.floor((east - xMin) / 360); k++) {
      const view = [[Math.max(west - 360 * k, xMin), south], [Math.min(east - 360 * k, xMax), north]];
      for (const r of this.visibleRegionsOfView({ getBounds: () => ({ toArray: () => view }) })) found.set(r.regionX + "," + r.regionY, r);
    }
    return [...found.values()];
  }
  visibleRegionsOfView(map) {
`,
  },
  {
    // A longitude/latitude region's west and east were clamped to -180..180 when placed on the map:
    // the half of a 0..360 dataset beyond 180 became zero wide and was never drawn, anywhere.
    find: '          x0: lonToMercatorNorm(geoBounds.xMin),\n          x1: lonToMercatorNorm(geoBounds.xMax),\n',
    replace: () => '          x0: (geoBounds.xMin + 180) / 360,\n          x1: (geoBounds.xMax + 180) / 360,\n',
  },
  {
    // ...and regions were drawn only at the world copies whose -180..180 meets the view, so that half
    // would not show west of 0 either. One more copy either side (clipped when off screen).
    find: '  const minWorld = Math.floor((west + 180) / 360);\n  const maxWorld = Math.floor((effectiveEast + 180) / 360);\n',
    replace: (found) => found.replace('/ 360);\n', '/ 360) - 1;\n').replace('/ 360);\n', '/ 360) + 1;\n'),
  },
]
const zarrLayerFixes = {
  name: 'zarr-layer-fixes',
  setup(b) {
    b.onLoad({ filter: /@carbonplan[\\/]zarr-layer[\\/]dist[\\/]index\.js$/ }, (args) => {
      let text = readFileSync(args.path, 'utf8')
      for (const { find, replace } of PATCHES) {
        const count = text.split(find).length - 1
        if (count !== 1) throw new Error(`zarr-layer: expected ${JSON.stringify(find.slice(0, 60))} once, found ${count}`)
        text = text.replace(find, () => replace(find))
      }
      return { contents: text, loader: 'js' }
    })
  },
}

rmSync(out, { recursive: true, force: true })
mkdirSync(out, { recursive: true })
await build({
  entryPoints: [join(here, 'src', 'main.js')],
  bundle: true,
  format: 'esm',
  minify: true,
  sourcemap: false,
  target: 'es2022',
  outfile: join(out, 'app.js'),
  loader: { '.css': 'css' },
  logLevel: 'warning',
  plugins: [zarrLayerFixes],
})
copyFileSync(join(here, 'src', 'index.html'), join(out, 'index.html'))
mkdirSync(join(out, 'basemap'))
const countries = JSON.parse(readFileSync(join(here, 'node_modules', 'world-atlas', 'countries-50m.json'), 'utf8'))
for (const [name, geojson] of Object.entries(basemapData(countries))) {
  writeFileSync(join(out, 'basemap', `${name}.geojson`), JSON.stringify(geojson))
}
copyFileSync(join(here, 'node_modules', 'maplibre-gl', 'dist', 'maplibre-gl-worker.mjs'), join(out, 'maplibre-gl-worker.mjs'))
console.log(`built ${out}`)
