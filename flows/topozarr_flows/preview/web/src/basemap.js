// The basemap: Natural Earth 1:50m land, coastlines and country borders, served with the page
// (static/basemap/*.geojson, made by build.mjs from npm world-atlas: src/basemap-data.mjs). Land is
// drawn under the data; borders and coastlines over it.

export const COLORS = {
  ocean: '#11151b',
  land: '#272c34',
  coastline: '#e8ecf1',
  border: '#8c96a3',
}
/** The first layer drawn over the data (the data layer goes before it). */
export const OVERLAY_BEFORE = 'borders'

/** A maplibre style: the ocean colour, and with `basemap` land, borders and coastlines. */
export function basemapStyle({ basemap = true, background = COLORS.ocean } = {}) {
  const layers = [{ id: 'ocean', type: 'background', paint: { 'background-color': background } }]
  if (!basemap) return { version: 8, sources: {}, layers }
  const source = (name, extra = {}) => ({ type: 'geojson', data: new URL(`basemap/${name}.geojson`, location.href).href,
                                          maxzoom: 6, ...extra })
  const width = (lo, hi) => ['interpolate', ['linear'], ['zoom'], 0, lo, 8, hi]
  return {
    version: 8,
    sources: { land: source('land', { attribution: 'Natural Earth' }), coast: source('coast'), borders: source('borders') },
    layers: [
      ...layers,
      { id: 'land', type: 'fill', source: 'land', paint: { 'fill-color': COLORS.land, 'fill-antialias': false } },
      { id: OVERLAY_BEFORE, type: 'line', source: 'borders',
        paint: { 'line-color': COLORS.border, 'line-width': width(0.6, 1.2), 'line-opacity': 0.8 } },
      { id: 'coastline', type: 'line', source: 'coast',
        paint: { 'line-color': COLORS.coastline, 'line-width': width(1.1, 1.8) } },
    ],
  }
}
