// The preview page: a maplibre map (Natural Earth basemap) with one zarr-layer layer over the
// pyramid served at ./data, a panel (variable, time, opacity, value under the pointer) and a legend.
// Colormap and clim come from the root's `zarr-layer` hints, the proj4 string and bounds from
// `topozarr:viewer` (zarr-layer 0.5.0 reads neither itself). URL parameters override:
//   ?variable=air&colormap=RdBu_r&clim=0,255&center=lon,lat&zoom=3&time=<index>&opacity=0.8
//   &selector=value|index&hints=0&basemap=0&bg=ff00ff&exactmercator=0
// window.__topozarr is the test hook: level(s) fetched, loading state, errors, pixels, queries.
import * as maplibregl from 'maplibre-gl'
import 'maplibre-gl/dist/maplibre-gl.css'
import { ZarrLayer } from '@carbonplan/zarr-layer'
import { COLORS, OVERLAY_BEFORE, basemapStyle } from './basemap.js'
import { DEFAULT_COLORMAP, canonical, colors } from './colormap.js'
import { formatLonLat, formatValue } from './format.js'
import { drawLegend } from './legend.js'

maplibregl.setWorkerUrl(new URL('maplibre-gl-worker.mjs', import.meta.url).href)

const params = new URLSearchParams(location.search)
const $ = (id) => document.getElementById(id)
const hook = (window.__topozarr = {
  ready: false,
  loading: true,
  lastChange: Date.now(),
  errors: [],
  notices: [],
  fetched: [],
  levelsFetched: [],
  options: null,
  lastQuery: null,
  basemapColors: COLORS,
})
const dataUrl = new URL('data', location.href).href

function fail(err) {
  const msg = String(err?.message ?? err)
  hook.errors.push(msg)
  $('error').textContent = hook.errors.join('\n')
}

function levelOf(url) {
  const rest = url.startsWith(dataUrl) ? url.slice(dataUrl.length).replace(/^\//, '') : ''
  const head = rest.split('/')[0]
  return /^\d+$/.test(head) && rest.includes('/c/') ? Number(head) : null
}

/** The colormap to draw with: the URL's, else the pyramid's hint, else viridis. An unknown name in
 * the URL is refused (an error; the hint or viridis is used); an unknown hint is drawn in viridis
 * and the legend says so, never under the hint's name. */
function chooseColormap(requested, hinted) {
  if (requested !== null) {
    if (canonical(requested)) return { name: requested, label: requested }
    fail(`colormap=${requested} is not a known colormap (CarbonPlan's or matplotlib's names: viridis, warm, ` +
         'earth, RdBu_r, ...); the pyramid\'s colormap is shown')
  }
  if (hinted && !canonical(hinted)) {
    const note = `the pyramid's colormap '${hinted}' is not a known colormap: drawn with ${DEFAULT_COLORMAP}`
    hook.notices.push(note)
    $('notice').textContent = note
    return { name: DEFAULT_COLORMAP, label: `${DEFAULT_COLORMAP} (not '${hinted}': unknown)` }
  }
  const name = hinted || DEFAULT_COLORMAP
  return { name, label: name }
}

async function main() {
  const info = await (await fetch('info.json')).json()
  const attrs = info.attributes
  const hints = attrs['zarr-layer'] ?? {}
  const viewer = params.get('hints') === '0' ? {} : attrs['topozarr:viewer'] ?? {}
  const names = Object.keys(info.variables)
  const requested = params.get('variable')
  if (requested !== null && !info.variables[requested]) {
    fail(`variable ${JSON.stringify(requested)} is not in the pyramid (${names.join(', ')})`)
  }
  const base = info.label.split('/').filter(Boolean).pop() ?? info.label
  $('title').textContent = info.title || base
  $('subtitle').textContent = info.label
  $('subtitle').title = info.label
  document.title = `${info.title || base} · topozarr preview`

  const [w, s, e, n] = info.lonlat_bounds
  const center = params.get('center')?.split(',').map(Number)
  const background = params.get('bg') ? `#${params.get('bg')}` : COLORS.ocean
  const basemap = params.get('basemap') !== '0'
  const map = new maplibregl.Map({
    container: 'map',
    style: basemapStyle({ basemap, background }),
    canvasContextAttributes: { preserveDrawingBuffer: true, antialias: false },
    attributionControl: { compact: true },
    fadeDuration: 0,
    ...(center ? { center, zoom: Number(params.get('zoom') ?? 2) } : { bounds: [[w, s], [e, n]], fitBoundsOptions: { padding: 24 } }),
  })
  hook.map = map

  let state = null
  let layer = null
  let opacity = Math.min(1, Math.max(0, Number(params.get('opacity') ?? 1)))
  const byIndex = params.get('selector') === 'index'

  /** Everything the page draws for one variable; `timeIndex` is the step along its first extra dim. */
  function variableState(variable, timeIndex) {
    const v = info.variables[variable]
    const hint = hints[variable] ?? {}
    const clim = params.get('clim')?.split(',').map(Number) ?? hint.clim ?? v.range ?? [0, 1]
    const colormap = chooseColormap(params.get('colormap'), hint.colormap)
    const extra = v.dims.filter((d) => d !== info.x_dim && d !== info.y_dim)
    const sliderDim = extra.find((d) => (info.coordinates[d]?.length ?? 0) > 1) ?? null
    return { variable, v, clim, colormap, extra, sliderDim, timeIndex: sliderDim ? timeIndex : 0 }
  }

  function selectorFor(st, i) {
    const out = {}
    for (const d of st.extra) {
      const index = d === st.sliderDim ? i : 0
      const values = info.coordinates[d]
      out[d] = byIndex || !values ? { selected: index, type: 'index' } : values[index]
    }
    return out
  }

  function makeLayer(st) {
    const options = {
      id: 'pyramid',
      source: dataUrl,
      zarrVersion: 3, // our pyramids are Zarr v3: no probing for v2 .zmetadata/.zattrs/.zgroup (404s)
      variable: st.variable,
      clim: st.clim,
      colormap: colors(st.colormap.name),
      opacity,
      selector: selectorFor(st, st.timeIndex),
      spatialDimensions: { lat: info.y_dim, lon: info.x_dim },
      transformRequest: (url) => {
        hook.fetched.push(url)
        hook.lastChange = Date.now()
        const level = levelOf(url)
        if (level !== null && !hook.levelsFetched.includes(level)) hook.levelsFetched.push(level)
        return { url }
      },
      onLoadingStateChange: (ls) => {
        hook.loading = ls.loading
        hook.lastChange = Date.now()
        if (ls.error) fail(ls.error)
      },
    }
    if (viewer.proj4) options.proj4 = viewer.proj4
    if (viewer.bounds) options.bounds = viewer.bounds
    if (typeof viewer.latIsAscending === 'boolean') options.latIsAscending = viewer.latIsAscending
    hook.options = { ...options, colormap: st.colormap.name, transformRequest: undefined, onLoadingStateChange: undefined }
    return new ZarrLayer(options)
  }

  function showControls(st) {
    drawLegend({ name: st.variable, variable: st.v, clim: st.clim, colors: colors(st.colormap.name),
                 colormapLabel: st.colormap.label })
    $('legend').hidden = false
    $('time-row').hidden = !st.sliderDim
    if (st.sliderDim) {
      $('time-name').textContent = st.sliderDim
      $('time').max = String(info.coordinates[st.sliderDim].length - 1)
      $('time').value = String(st.timeIndex)
      $('time-label').textContent = info.labels[st.sliderDim][st.timeIndex]
    }
  }

  /** Draw `variable` (a new layer: another variable can have other dims, clim and colormap). */
  function show(variable, timeIndex = 0) {
    state = variableState(variable, timeIndex)
    if (layer && map.getLayer('pyramid')) map.removeLayer('pyramid')
    layer = makeLayer(state)
    hook.layer = layer
    hook.lastChange = Date.now()
    if (hook.ready) map.addLayer(layer, map.getLayer(OVERLAY_BEFORE) ? OVERLAY_BEFORE : undefined)
    showControls(state)
  }

  if (names.length > 1) {
    const select = $('variable')
    for (const name of names) {
      const option = document.createElement('option')
      option.value = name
      const longName = info.variables[name].long_name
      option.textContent = longName && longName !== name ? `${name} · ${longName}` : name
      select.append(option)
    }
    select.addEventListener('change', () => hook.setVariable(select.value))
    $('variable-row').hidden = false
  }
  hook.setVariable = (name) => {
    $('variable').value = name
    const url = new URL(location.href)
    url.searchParams.set('variable', name)
    history.replaceState(null, '', url)
    show(name)
  }

  let pending = null
  hook.setTime = (i) => {
    if (!state.sliderDim) return
    state.timeIndex = i
    $('time').value = String(i)
    $('time-label').textContent = info.labels[state.sliderDim][i]
    hook.lastChange = Date.now()
    layer.setSelector(selectorFor(state, i))
  }
  $('time').addEventListener('input', () => {
    $('time-label').textContent = info.labels[state.sliderDim][Number($('time').value)]
    clearTimeout(pending) // debounce: one fetch per settled position, as zarr-layer advises
    pending = setTimeout(() => hook.setTime(Number($('time').value)), 150)
  })
  hook.setOpacity = (value) => {
    opacity = value
    $('opacity').value = String(value)
    $('opacity-label').textContent = `${Math.round(value * 100)}%`
    hook.lastChange = Date.now()
    layer.setOpacity(value)
  }
  $('opacity').value = String(opacity)
  $('opacity-label').textContent = `${Math.round(opacity * 100)}%`
  $('opacity').addEventListener('input', () => hook.setOpacity(Number($('opacity').value)))

  const first = requested !== null && info.variables[requested] ? requested
    : names.find((name) => hints[name]) ?? names[0]
  const firstIndex = Number(params.get('time') ?? 0)
  show(first, firstIndex)
  if (names.length > 1) $('variable').value = first

  // a longitude/latitude pyramid is queried at the longitude it stores (a world copy's, or 0..360)
  const west = !viewer.proj4 && attrs['proj:code'] === 'EPSG:4326' ? attrs['spatial:bbox'][0] : null
  const stored = (lng) => (west === null ? lng : west + ((((lng - west) % 360) + 360) % 360))
  hook.query = async (lng, lat) => {
    const result = await layer.queryData({ type: 'Point', coordinates: [stored(lng), lat] })
    const values = result?.[state.variable]
    hook.lastQuery = { lng, lat, value: Array.isArray(values) ? values[0] ?? null : values ?? null }
    return hook.lastQuery
  }
  let querying = 0
  map.on('mousemove', async (ev) => {
    const ticket = ++querying
    const where = formatLonLat(ev.lngLat.lng, ev.lngLat.lat, map.getZoom())
    try {
      const q = await hook.query(ev.lngLat.lng, ev.lngLat.lat)
      if (ticket !== querying) return // a later move already answered
      $('value').textContent = formatValue(q.value, state.v, state.clim)
    } catch (err) {
      if (ticket === querying) $('value').textContent = '–'
    }
    $('where').textContent = where
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
  // as soon as the style is parsed: the data loads while maplibre's worker still tiles the basemap
  map.once('style.load', () => {
    map.addLayer(layer, map.getLayer(OVERLAY_BEFORE) ? OVERLAY_BEFORE : undefined)
    hook.ready = true
  })
}

main().catch(fail)
