// Small DOM helpers: element building, tables, JSON, sparklines, formats.
// No inline styles or scripts anywhere: the console's Content-Security-Policy
// allows only its own files.

/**
 * An element: h('a', {href: '#/'}, 'text', child…). Attributes starting
 * with `on` are listeners; `class` and `data-*` are attributes; null and
 * false children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'value') {
      element.value = value;
    } else {
      element.setAttribute(name, value === true ? '' : value);
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A link to a console route. */
export function link(route, text) {
  return h('a', { href: `#${route}` }, text);
}

/**
 * A table: columns are [title, row => cell] (a cell is text or a node);
 * `empty` is shown when there is no row.
 */
export function table(columns, rows, { empty = 'Nothing yet.', rowAttrs } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h(
    'table',
    {},
    h('thead', {}, h('tr', {}, columns.map(([title]) => h('th', {}, title)))),
    h(
      'tbody',
      {},
      rows.map((row) =>
        h('tr', rowAttrs ? rowAttrs(row) : {}, columns.map(([, cell]) => h('td', {}, cell(row) ?? ''))),
      ),
    ),
  );
}

/** A definition list of [term, value] pairs. */
export function facts(pairs) {
  return h(
    'dl',
    { class: 'facts' },
    pairs
      .filter(([, value]) => value !== undefined)
      .map(([term, value]) => [h('dt', {}, term), h('dd', {}, value ?? '—')]),
  );
}

/** A JSON value, indented, in a <pre>. */
export function json(value) {
  return h('pre', { class: 'json' }, JSON.stringify(value, null, 2));
}

/** A page heading with optional actions at its right. */
export function heading(title, ...actions) {
  return h('div', { class: 'heading' }, h('h1', {}, title), h('div', { class: 'actions' }, actions));
}

/** A section with a title. */
export function section(title, ...children) {
  return h('section', {}, h('h2', {}, title), children);
}

/** A problem (an ApiError or any error) as a message box. */
export function problem(error) {
  const code = error.code ? h('code', {}, error.code) : null;
  return h('div', { class: 'problem', role: 'alert' }, code, ' ', error.message || String(error));
}

/** A status badge; the class comes from the word (ok, failed, …). */
export function badge(text) {
  return h('span', { class: `badge badge-${String(text).replace(/[^a-z_]/gi, '')}` }, text);
}

/** A button that runs `action` and disables itself meanwhile. */
export function button(text, action, attrs = {}) {
  const element = h('button', { type: 'button', ...attrs }, text);
  element.addEventListener('click', async () => {
    element.disabled = true;
    try {
      await action(element);
    } finally {
      element.disabled = false;
    }
  });
  return element;
}

/** A labelled form field. */
export function field(label, input) {
  return h('label', { class: 'field' }, h('span', {}, label), input);
}

/** A <select> of options ([value, text] or value). */
export function select(name, options, selected) {
  return h(
    'select',
    { name },
    options.map((option) => {
      const [value, text] = Array.isArray(option) ? option : [option, option];
      return h('option', { value, selected: value === selected }, text);
    }),
  );
}

const SVG = 'http://www.w3.org/2000/svg';

/** A small line chart of recent values (oldest first). */
export function sparkline(values, { width = 120, height = 24, label = '' } = {}) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label || 'trend');
  // One sample is a level already: drawn flat across.
  const series = values.length === 1 ? [values[0], values[0]] : values;
  if (series.length > 1) {
    const max = Math.max(...series, 1);
    const step = width / (series.length - 1);
    const points = series
      .map((value, index) => `${(index * step).toFixed(1)},${(height - 2 - (value / max) * (height - 4)).toFixed(1)}`)
      .join(' ');
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', points);
    svg.append(line);
  }
  return svg;
}

export function bytes(count) {
  if (count === null || count === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

export function rate(perSecond) {
  if (perSecond === null || perSecond === undefined) return '…';
  return `${perSecond < 10 ? perSecond.toFixed(1) : Math.round(perSecond)}/s`;
}

export function count(value) {
  return value === null || value === undefined ? '—' : Number(value).toLocaleString('en');
}

/** A duration in ms, or "—". */
export function millis(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms % 86_400_000 === 0) return `${ms / 86_400_000} d`;
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000} h`;
  if (ms % 60_000 === 0) return `${ms / 60_000} min`;
  if (ms % 1000 === 0) return `${ms / 1000} s`;
  return `${ms} ms`;
}

/** An RFC 3339 time as local text, with the original as a tooltip. */
export function time(text) {
  if (!text) return '—';
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return text;
  return h('time', { datetime: text, title: text }, date.toLocaleString('en-GB'));
}

/** Toggles a JSON view under a table row (inspect). */
export function toggleDetail(row, value, columns) {
  const next = row.nextElementSibling;
  if (next?.classList.contains('detail')) {
    next.remove();
    return;
  }
  row.after(h('tr', { class: 'detail' }, h('td', { colspan: columns }, json(value))));
}

/** The values of a form's named fields. */
export function values(form) {
  return Object.fromEntries(new FormData(form).entries());
}
