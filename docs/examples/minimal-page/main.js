// The smallest page that draws a topozarr-flows pyramid right with zarr-layer 0.5.0, whatever its CRS
// (EPSG:4326, EPSG:3857, UTM, ...). Bundle it (esbuild main.js --bundle --format=esm --outfile=app.js)
// and serve it, with maplibre-gl/dist/maplibre-gl-worker.mjs beside app.js and the pyramid at ./data.
// docs/viewing.md says why each option is there.
import * as maplibregl from 'maplibre-gl'
import 'maplibre-gl/dist/maplibre-gl.css'
import { ZarrLayer } from '@carbonplan/zarr-layer'

const params = new URLSearchParams(location.search)
const source = new URL('data', location.href).href
const attrs = (await (await fetch(`${source}/zarr.json`)).json()).attributes
const viewer = attrs['topozarr:viewer']
const [yDim, xDim] = attrs['spatial:dimensions']
const variable = params.get('variable') ?? Object.keys(attrs['zarr-layer'] ?? {})[0]

const map = new maplibregl.Map({
  container: 'map',
  style: { version: 8, sources: {}, layers: [] },
  center: params.get('center').split(',').map(Number),
  zoom: Number(params.get('zoom')),
})
map.on('load', () => map.addLayer(new ZarrLayer({
  id: 'pyramid',
  source,
  variable,
  zarrVersion: 3,
  clim: attrs['zarr-layer']?.[variable]?.clim ?? [0, 1],
  colormap: Array.from({ length: 256 }, (_, i) => [i, i, i]),
  spatialDimensions: { lat: yDim, lon: xDim },
  bounds: viewer.bounds,
  latIsAscending: viewer.latIsAscending,
  ...(viewer.proj4 ? { proj4: viewer.proj4 } : {}),
})))
window.map = map
