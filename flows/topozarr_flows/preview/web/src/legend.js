// The colour bar: the variable's long name and units, the colour range's ends and middle rounded to
// its scale, and the colormap's name (with a note when a hint named one the page does not know).
import { formatNumber, rangeDecimals, unitsOf } from './format.js'

const $ = (id) => document.getElementById(id)

/** Draw the legend for `variable` (the page's info entry, with its `name`). */
export function drawLegend({ name, variable, clim, colors, colormapLabel }) {
  const canvas = $('legend-bar')
  const ctx = canvas.getContext('2d')
  canvas.width = colors.length
  canvas.height = 1
  const img = ctx.createImageData(colors.length, 1)
  colors.forEach(([r, g, b], i) => img.data.set([r, g, b, 255], i * 4))
  ctx.putImageData(img, 0, 0)
  const units = unitsOf(variable)
  $('legend-title').textContent = variable.long_name || name
  $('legend-units').textContent = units ? `[${units}]` : ''
  const decimals = rangeDecimals(clim)
  $('legend-min').textContent = formatNumber(clim[0], decimals)
  $('legend-mid').textContent = formatNumber((clim[0] + clim[1]) / 2, decimals)
  $('legend-max').textContent = formatNumber(clim[1], decimals)
  $('legend-cmap').textContent = colormapLabel
}
