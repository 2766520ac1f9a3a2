// The console's shell: hash routes to pages, the health badge, the
// identity link, and what a page may leave running (timers, event sources),
// stopped when the page changes.

import { api, apiKey, readiness, whenUnauthenticated } from './api.js';
import { fill, h, problem } from './dom.js';
import * as overview from './pages/overview.js';
import * as topics from './pages/topics.js';
import * as events from './pages/events.js';
import * as groups from './pages/groups.js';
import * as streams from './pages/streams.js';
import * as jobs from './pages/jobs.js';
import * as workflows from './pages/workflows.js';
import * as webhooks from './pages/webhooks.js';
import * as tail from './pages/tail.js';
import * as login from './pages/login.js';

// [pattern, nav entry, page function]; `:name` matches one path segment.
const ROUTES = [
  ['/', 'overview', overview.page],
  ['/topics', 'topics', topics.list],
  ['/topics/:topic', 'topics', topics.detail],
  ['/events', 'events', events.browser],
  ['/events/:topic/:partition/:offset', 'events', events.detail],
  ['/groups', 'groups', groups.list],
  ['/groups/:topic/:group', 'groups', groups.detail],
  ['/streams', 'streams', streams.page],
  ['/jobs', 'jobs', jobs.list],
  ['/jobs/:job', 'jobs', jobs.detail],
  ['/workflows', 'workflows', workflows.list],
  ['/workflows/:namespace/:name', 'workflows', workflows.definition],
  ['/workflow-instances/:instance', 'workflows', workflows.instance],
  ['/webhooks', 'webhooks', webhooks.list],
  ['/webhooks/:endpoint', 'webhooks', webhooks.detail],
  ['/tail', 'tail', tail.page],
  ['/login', null, login.page],
];

const view = document.getElementById('view');
let current = null;

/**
 * What a page gets: where to draw, the route's parameters and query, and
 * `every`/`onLeave` for work that must stop when the user moves on.
 */
class Context {
  constructor(params, query) {
    this.params = params;
    this.query = query;
    this.alive = true;
    this.cleanups = [];
  }

  /** Runs `task` now and every `ms` while the page is shown (never two at once). */
  every(ms, task) {
    let timer = null;
    const run = async () => {
      if (!this.alive) return;
      try {
        await task();
      } catch (error) {
        this.report(error);
      }
      if (this.alive) timer = setTimeout(run, ms);
    };
    this.onLeave(() => clearTimeout(timer));
    return run();
  }

  onLeave(cleanup) {
    this.cleanups.push(cleanup);
  }

  /** Shows an error at the top of the page (not the console: it is expected). */
  report(error) {
    if (!this.alive) return;
    const box = view.querySelector('.page-problem');
    if (box) fill(box, problem(error));
  }

  /** Moves to another route with this query. */
  go(route, query = {}) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== '') params.set(name, value);
    }
    const text = params.toString();
    location.hash = `#${route}${text ? `?${text}` : ''}`;
  }

  leave() {
    this.alive = false;
    for (const cleanup of this.cleanups) cleanup();
  }
}

function match(path) {
  const parts = path.split('/').filter(Boolean);
  for (const [pattern, nav, page] of ROUTES) {
    const want = pattern.split('/').filter(Boolean);
    if (want.length !== parts.length) continue;
    const params = {};
    if (
      want.every((piece, index) => {
        if (piece.startsWith(':')) {
          params[piece.slice(1)] = decodeURIComponent(parts[index]);
          return true;
        }
        return piece === parts[index];
      })
    ) {
      return { nav, page, params };
    }
  }
  return null;
}

async function route() {
  const [path, queryText = ''] = (location.hash.slice(1) || '/').split('?');
  current?.leave();
  const found = match(path);
  for (const entry of document.querySelectorAll('nav.side a')) {
    entry.classList.toggle('active', Boolean(found) && entry.dataset.page === found.nav);
  }
  const context = new Context(found?.params || {}, Object.fromEntries(new URLSearchParams(queryText)));
  current = context;
  fill(view, h('div', { class: 'page-problem' }));
  if (!found) {
    fill(view, h('h1', {}, 'Not found'), h('p', {}, `The console has no page ${path}.`));
    return;
  }
  try {
    const content = h('div', { class: 'page' });
    view.append(content);
    await found.page(content, context);
  } catch (error) {
    context.report(error);
  }
  if (context.alive) view.dataset.ready = path;
}

async function health() {
  const badge = document.getElementById('health');
  try {
    const ready = await readiness();
    badge.textContent = ready.status || (ready.ok ? 'ready' : 'not ready');
    badge.className = `badge badge-${ready.ok ? 'ready' : 'down'}`;
    badge.title = ready.problems ? JSON.stringify(ready.problems) : 'GET /readyz';
  } catch {
    badge.textContent = 'unreachable';
    badge.className = 'badge badge-down';
  }
}

/** Who the console acts as: `GET /v1/auth/whoami` with the stored key. */
export async function identify() {
  const identity = document.getElementById('identity');
  try {
    const who = await api('/v1/auth/whoami');
    identity.textContent = who.identity === 'anonymous' ? 'anonymous (no auth)' : who.identity;
    return who;
  } catch {
    identity.textContent = apiKey() ? 'key refused: log in' : 'log in';
    return null;
  }
}

whenUnauthenticated(() => {
  if (!location.hash.startsWith('#/login')) {
    location.hash = `#/login?next=${encodeURIComponent(location.hash.slice(1) || '/')}`;
  }
});

window.addEventListener('hashchange', route);
health();
setInterval(health, 5000);
identify().then(route);
