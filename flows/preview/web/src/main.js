// The preview page: a maplibre map with one zarr-layer layer over the pyramid served at ./data.
// Colormap and clim come from the root's `zarr-layer` hints, the proj4 string and bounds from
// `topozarr:viewer` (zarr-layer reads neither itself). URL parameters override:
//   ?variable=air&colormap=greys&clim=0,255&center=lon,lat&zoom=3&time=<index>&selector=value|index&hints=0
// window.__topozarr is the test hook: level(s) fetched, loading state, errors, pixels, queries.
import * as maplibregl from 'maplibre-gl'
import 'maplibre-gl/dist/maplibre-gl.css'
import { ZarrLayer } from '@carbonplan/zarr-layer'
import colormaps from './colormaps.json'

maplibregl.setWorkerUrl(new URL('maplibre-gl-worker.mjs', import.meta.url).href)

const params = new URLSearchParams(location.search)
const hook = (window.__topozarr = {
  ready: false,
  loading: true,
  lastChange: Date.now(),
  errors: [],
  fetched: [],
  levelsFetched: [],
  options: null,
  lastQuery: null,
})
const dataUrl = new URL('data', location.href).href

function fail(err) {
  const msg = String(err?.message ?? err)
  hook.errors.push(msg)
  document.getElementById('error').textContent = msg
}

/** 256 colours interpolated between a named colormap's anchors (zarr-layer wants an array). */
export function colormapColors(name) {
  const anchors = colormaps[name] ?? colormaps.viridis
  const rgb = anchors.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)))
  const out = []
  for (let k = 0; k < 256; k++) {
    const t = (k / 255) * (rgb.length - 1)
    const i = Math.min(Math.floor(t), rgb.length - 2)
    const f = t - i
    out.push(rgb[i].map((c, j) => Math.round(c + (rgb[i + 1][j] - c) * f)))
  }
  return out
}

function levelOf(url) {
  const rest = url.startsWith(dataUrl) ? url.slice(dataUrl.length).replace(/^\//, '') : ''
  const head = rest.split('/')[0]
  return /^\d+$/.test(head) && rest.includes('/c/') ? Number(head) : null
}

async function main() {
  const info = await (await fetch('info.json')).json()
  const attrs = info.attributes
  const hints = attrs['zarr-layer'] ?? {}
  const viewer = params.get('hints') === '0' ? {} : attrs['topozarr:viewer'] ?? {}
  const names = Object.keys(info.variables)
  const variable = params.get('variable') ?? names.find((n) => hints[n]) ?? names[0]
  if (!info.variables[variable]) throw new Error(`variable ${JSON.stringify(variable)} is not in the pyramid (${names.join(', ')})`)
  const hint = hints[variable] ?? {}
  const clim = params.get('clim')?.split(',').map(Number) ?? hint.clim ?? info.variables[variable].range ?? [0, 1]
  const colormapName = params.get('colormap') ?? hint.colormap ?? 'viridis'
  const dims = info.variables[variable].dims.filter((d) => d !== info.x_dim && d !== info.y_dim)
  const timeDim = dims[0]
  const byIndex = params.get('selector') === 'index'
  const selectorFor = (i) => {
    if (!timeDim) return {}
    return byIndex ? { [timeDim]: { selected: i, type: 'index' } } : { [timeDim]: info.coordinates[timeDim][i] }
  }
  const timeIndex = Number(params.get('time') ?? 0)

  const [w, s, e, n] = info.lonlat_bounds
  const center = params.get('center')?.split(',').map(Number)
  const map = new maplibregl.Map({
    container: 'map',
    style: { version: 8, sources: {}, layers: [{ id: 'bg', type: 'background', paint: { 'background-color': '#ff00ff' } }] },
    canvasContextAttributes: { preserveDrawingBuffer: true, antialias: false },
    attributionControl: false,
    fadeDuration: 0,
    ...(center ? { center, zoom: Number(params.get('zoom') ?? 2) } : { bounds: [[w, s], [e, n]] }),
  })
  hook.map = map
  const options = {
    id: 'pyramid',
    source: dataUrl,
    zarrVersion: 3, // our pyramids are Zarr v3: no probing for v2 .zmetadata/.zgroup (404s)
    variable,
    clim,
    colormap: colormapColors(colormapName),
    selector: selectorFor(timeIndex),
    spatialDimensions: { lat: info.y_dim, lon: info.x_dim },
    transformRequest: (url) => {
      hook.fetched.push(url)
      const level = levelOf(url)
      if (level !== null && !hook.levelsFetched.includes(level)) hook.levelsFetched.push(level)
      return { url }
    },
    onLoadingStateChange: (state) => {
      hook.loading = state.loading
      hook.lastChange = Date.now()
      if (state.error) fail(state.error)
    },
  }
  if (viewer.proj4) options.proj4 = viewer.proj4
  if (viewer.bounds) options.bounds = viewer.bounds
  if (typeof viewer.latIsAscending === 'boolean') options.latIsAscending = viewer.latIsAscending
  hook.options = { ...options, colormap: colormapName, transformRequest: undefined, onLoadingStateChange: undefined }
  const layer = new ZarrLayer(options)
  hook.layer = layer
  document.getElementById('title').textContent = `${info.label} · ${variable} · ${colormapName} [${clim.join(', ')}]`

  if (timeDim) {
    const values = info.coordinates[timeDim]
    const slider = document.getElementById('time')
    const label = document.getElementById('time-label')
    slider.max = String(values.length - 1)
    slider.value = String(timeIndex)
    const unit = info.units?.[timeDim] ? ` (${info.units[timeDim]})` : ''
    label.textContent = `${timeDim} = ${values[timeIndex]}${unit}`
    document.getElementById('time-row').hidden = false
    let pending = null
    hook.setTime = (i) => {
      slider.value = String(i)
      label.textContent = `${timeDim} = ${values[i]}${unit}`
      hook.lastChange = Date.now()
      layer.setSelector(selectorFor(i))
    }
    slider.addEventListener('input', () => {
      clearTimeout(pending) // debounce: one fetch per settled position, as zarr-layer advises
      pending = setTimeout(() => hook.setTime(Number(slider.value)), 150)
    })
  }

  hook.query = async (lng, lat) => {
    const result = await layer.queryData({ type: 'Point', coordinates: [lng, lat] })
    const values = result?.[variable]
    hook.lastQuery = { lng, lat, value: Array.isArray(values) ? values[0] ?? null : values ?? null }
    return hook.lastQuery
  }
  map.on('mousemove', async (ev) => {
    try {
      const q = await hook.query(ev.lngLat.lng, ev.lngLat.lat)
      document.getElementById('value').textContent = q.value ?? '–'
    } catch (err) {
      document.getElementById('value').textContent = '–'
    }
  })
  hook.project = (lng, lat) => {
    const p = map.project([lng, lat])
    return [p.x, p.y]
  }
  hook.unproject = (x, y) => {
    const p = map.unproject([x, y])
    return [p.lng, p.lat]
  }
  hook.jumpTo = (opts) => {
    hook.lastChange = Date.now()
    map.jumpTo(opts)
  }
  hook.settled = () => !hook.loading && map.loaded() && !map.isMoving() && Date.now() - hook.lastChange > 400
  hook.pixels = () => {
    const canvas = map.getCanvas()
    const c = document.createElement('canvas')
    c.width = canvas.width
    c.height = canvas.height
    const ctx = c.getContext('2d')
    ctx.drawImage(canvas, 0, 0)
    const data = ctx.getImageData(0, 0, c.width, c.height).data
    let bin = ''
    for (let i = 0; i < data.length; i += 0x8000) bin += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000))
    return { width: c.width, height: c.height, rgba: btoa(bin) }
  }
  map.on('render', () => { hook.lastChange = Date.now() })
  map.on('error', (ev) => fail(ev.error ?? ev))
  map.on('load', () => {
    map.addLayer(layer)
    hook.ready = true
  })
}

main().catch(fail)
