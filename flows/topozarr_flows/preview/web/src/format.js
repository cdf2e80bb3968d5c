// Numbers as a person reads them: legend ticks to the colour range's scale, values to the data's
// precision, with units.

const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x))

/** `x` with `decimals` decimals; exponent form for very large or very small magnitudes. */
export function formatNumber(x, decimals) {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–'
  const ax = Math.abs(x)
  if (ax >= 1e7 || (ax > 0 && ax < 1e-5)) return x.toExponential(3).replace('e+', 'e')
  const text = x.toFixed(decimals)
  return /^-0(\.0*)?$/.test(text) ? text.slice(1) : text
}

/** Decimals for labels of a colour range: three significant digits of its span. */
export function rangeDecimals(clim) {
  const span = Math.abs(clim[1] - clim[0])
  return span > 0 ? clamp(2 - Math.floor(Math.log10(span)), 0, 8) : 2
}

/** Decimals for a value of a variable: whole numbers for integers, the scale factor's for packed
 * integers, else 1/1000 of the colour range, never more than float32 (7) or float64 (15) digits. */
export function valueDecimals(variable, clim, value) {
  const dtype = variable.dtype ?? ''
  const integer = /^u?int/.test(dtype)
  if (integer && variable.scale_factor === undefined) return 0
  if (integer) return clamp(Math.ceil(-Math.log10(Math.abs(variable.scale_factor))), 0, 10)
  const span = Math.abs(clim[1] - clim[0])
  let decimals = span > 0 ? clamp(3 - Math.floor(Math.log10(span)), 0, 12) : 3
  if (value) {
    const significant = dtype === 'float64' ? 15 : 7
    decimals = Math.min(decimals, Math.max(0, significant - 1 - Math.floor(Math.log10(Math.abs(value)))))
  }
  return decimals
}

/** Units worth showing ('' for none or the dimensionless "1"). */
export function unitsOf(variable) {
  const units = String(variable.units ?? '').trim()
  return units === '1' ? '' : units
}

/** A value with its units, rounded to the data's precision. */
export function formatValue(value, variable, clim) {
  if (value === null || value === undefined || !Number.isFinite(value)) return 'no data'
  const units = unitsOf(variable)
  return formatNumber(value, valueDecimals(variable, clim, value)) + (units ? ` ${units}` : '')
}

/** 12.345°E 45.678°N, with more decimals when zoomed in. */
export function formatLonLat(lng, lat, zoom) {
  const d = clamp(Math.ceil(zoom / 3), 1, 5)
  const wrapped = ((((lng + 180) % 360) + 360) % 360) - 180
  return `${Math.abs(wrapped).toFixed(d)}°${wrapped < 0 ? 'W' : 'E'} ${Math.abs(lat).toFixed(d)}°${lat < 0 ? 'S' : 'N'}`
}
