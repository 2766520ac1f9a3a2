// The console's only way to the server: Herald's public REST API, with the
// API key the user entered (if any) as `Authorization: Bearer`, and as
// `?access_token=` on SSE, where a browser cannot set headers.

const KEY = 'herald.console.key';

// The server's root: the console is served at <root>/ui/.
export const root = location.pathname.replace(/\/ui(\/.*)?$/, '');

/** The stored API key, or null (no auth, or not logged in). */
export function apiKey() {
  return sessionStorage.getItem(KEY) || localStorage.getItem(KEY);
}

/** Stores the key: for this tab only, or (remember) in this browser. */
export function setApiKey(key, remember) {
  forgetApiKey();
  (remember ? localStorage : sessionStorage).setItem(KEY, key);
}

export function forgetApiKey() {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
}

/** A failed call: the HTTP status and the RFC 9457 problem, when there is one. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.code = problem?.code;
  }
}

function withQuery(path, query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== '') params.set(name, value);
  }
  const text = params.toString();
  return root + path + (text ? `?${text}` : '');
}

/**
 * One REST call. `body` is sent as JSON; the answer's JSON is returned
 * (null for 204/202 without a body); a non-2xx answer throws ApiError.
 */
export async function api(path, { method = 'GET', query, body, key = apiKey() } = {}) {
  const headers = { Accept: 'application/json' };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(withQuery(path, query), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = { detail: text };
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, json);
    if (response.status === 401) unauthenticated(error);
    throw error;
  }
  return json;
}

let unauthenticated = () => {};

/** What to do when the server asks for credentials (the shell: go to log-in). */
export function whenUnauthenticated(handler) {
  unauthenticated = handler;
}

/** `GET /readyz` as `{ok, status, problems}`; never throws for 503. */
export async function readiness() {
  const response = await fetch(`${root}/readyz`, { headers: { Accept: 'application/json' } });
  const body = await response.json().catch(() => ({}));
  return { ok: response.ok, ...body };
}

/** An SSE URL with the key as `access_token`. */
export function sseUrl(path, query) {
  return withQuery(path, { ...query, access_token: apiKey() || undefined });
}

let openapi = null;

/** `/openapi.json`, fetched once: what this server offers. */
export async function openapiDocument() {
  openapi ??= api('/openapi.json').catch((error) => {
    openapi = null;
    throw error;
  });
  return openapi;
}

/**
 * Whether the server routes `method path` (a path of /openapi.json): the
 * console asks only for what exists, so an older or newer server never
 * answers it 404.
 */
export async function offers(method, path) {
  const doc = await openapiDocument();
  return Boolean(doc.paths?.[path]?.[method.toLowerCase()]);
}

/** Path segment encoding. */
export const seg = encodeURIComponent;

// Rates from counters the API gives (partition end offsets): each key keeps
// its recent samples, across page changes, so a page shows a rate at once.
const samples = new Map();
const KEEP = 60;

/**
 * Records `value` (a counter) for `key` now; returns {rate, history}: the
 * rate per second since the previous sample and the recent rates.
 */
export function sample(key, value, now = performance.now()) {
  const series = samples.get(key) || { last: null, rates: [] };
  let rate = null;
  if (series.last && now > series.last.at) {
    rate = Math.max(0, ((value - series.last.value) * 1000) / (now - series.last.at));
    series.rates.push(rate);
    if (series.rates.length > KEEP) series.rates.shift();
  }
  series.last = { at: now, value };
  samples.set(key, series);
  return { rate: rate ?? series.rates.at(-1) ?? null, history: series.rates };
}

/** Records a gauge (e.g. a lag); returns its recent values. */
export function gauge(key, value) {
  const series = samples.get(key) || { last: null, rates: [] };
  series.rates.push(value);
  if (series.rates.length > KEEP) series.rates.shift();
  samples.set(key, series);
  return series.rates;
}
