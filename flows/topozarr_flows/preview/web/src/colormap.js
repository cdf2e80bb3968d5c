// Colormap names -> 256 colours, from the table the quicklook uses too (topozarr_core/viewer/colormaps.json:
// CarbonPlan's maps and matplotlib's common ones). Same lookup rules as topozarr_core/colormaps.py:
// as written, then an alias, then case-insensitively (CarbonPlan's lowercase names first); `_r` reverses.
import table from '../../../../../topozarr_core/viewer/colormaps.json'

export const DEFAULT_COLORMAP = 'viridis'

/** {name, reversed} for a colormap name, or null when the table does not have it. */
export function canonical(name) {
  let key = String(name).trim()
  const reversed = key.endsWith('_r') && !(key in table.maps)
  if (reversed) key = key.slice(0, -2)
  key = table.aliases[key] ?? key
  if (key in table.maps) return { name: key, reversed }
  const folded = Object.keys(table.maps).filter((m) => m.toLowerCase() === key.toLowerCase())
  if (!folded.length) return null
  folded.sort((a, b) => (a !== a.toLowerCase()) - (b !== b.toLowerCase()) || (a < b ? -1 : 1))
  return { name: folded[0], reversed }
}

/** The 256 [r, g, b] colours of a known colormap name (low end first). */
export function colors(name) {
  const found = canonical(name)
  if (!found) throw new Error(`colormap ${JSON.stringify(name)} is not known`)
  const hex = table.maps[found.name]
  const out = []
  for (let i = 0; i < hex.length; i += 6) out.push([0, 2, 4].map((j) => parseInt(hex.slice(i + j, i + j + 2), 16)))
  return found.reversed ? out.reverse() : out
}

export const knownColormaps = () => Object.keys(table.maps).sort((a, b) => a.localeCompare(b))
