// The basemap's data, made at build time (build.mjs writes it to static/basemap/*.geojson): Natural
// Earth 1:50m countries from npm world-atlas (TopoJSON), decoded with topojson-client, fixed where a
// flat map needs it, rounded to 1e-4 degrees (11 m, under 1:50m's detail). Made once by the build,
// fetched and parsed by maplibre's worker: the page's own thread does none of it.
import { feature, mesh } from 'topojson-client'

/** Lines split where they are not lines on the map: a step across the antimeridian (drawn, it would
 * cross the whole world), and the edges along which Natural Earth cuts land at 180 degrees and
 * closes Antarctica at the pole (not coasts: a vertical line at 180, a line at the map's bottom). */
export function withoutCuts(lines, { coast }) {
  const out = []
  const cut = ([x0, y0], [x1, y1]) => Math.abs(x1 - x0) > 180 || (coast && (
    (Math.abs(x0) > 179.99 && Math.abs(x1) > 179.99 && Math.sign(x0) === Math.sign(x1)) || (y0 < -89.9 && y1 < -89.9)))
  for (const line of lines.coordinates) {
    let current = [line[0]]
    for (let i = 1; i < line.length; i++) {
      if (cut(line[i - 1], line[i])) {
        if (current.length > 1) out.push(current)
        current = [line[i]]
      } else current.push(line[i])
    }
    if (current.length > 1) out.push(current)
  }
  return { type: 'MultiLineString', coordinates: out }
}

/** Rings that cross the antimeridian (Russia, Fiji) step from 179.9 to -179.9: maplibre fills them as
 * a band around the world. Continue them past 180 instead (maplibre draws the part beyond at -180).
 * Steps along the pole (Antarctica's closing edge, beyond Mercator's 85 degrees) stay as they are. */
export function unwrapped(geometry) {
  const ring = (points) => {
    let shift = 0
    return points.map(([x, y], i) => {
      if (i > 0) {
        const [px, py] = points[i - 1]
        if (Math.abs(x - px) > 180 && Math.abs(y) < 89.9 && Math.abs(py) < 89.9) shift += x < px ? 360 : -360
      }
      return [x + shift, y]
    })
  }
  const polygons = geometry.type === 'Polygon' ? [geometry.coordinates] : geometry.coordinates
  const out = polygons.map((rings) => rings.map(ring))
  return geometry.type === 'Polygon' ? { type: 'Polygon', coordinates: out[0] } : { type: 'MultiPolygon', coordinates: out }
}

const round = (geometry) => JSON.parse(JSON.stringify(geometry, (k, v) => (typeof v === 'number' ? Math.round(v * 1e4) / 1e4 : v)))

/** {land, coast, borders}: GeoJSON of the land fill (as countries: maplibre triangulates the merged
 * land polygon wrongly in places), the coastlines and the borders between countries. */
export function basemapData(countries) {
  const land = feature(countries, countries.objects.countries)
  land.features = land.features.map((f) => ({ type: 'Feature', properties: {}, geometry: round(unwrapped(f.geometry)) }))
  const line = (geometry) => ({ type: 'Feature', properties: {}, geometry: round(geometry) })
  return {
    land,
    coast: line(withoutCuts(mesh(countries, countries.objects.land), { coast: true })),
    borders: line(withoutCuts(mesh(countries, countries.objects.countries, (a, b) => a !== b), { coast: false })),
  }
}
