// Webhooks: endpoints (state, filter, stats), one endpoint's delivery
// attempts, and manual redelivery of a message.

import { api, seg } from '../api.js';
import { badge, button, count, facts, fill, h, heading, link, problem, section, table, time } from '../dom.js';

export async function list(view, context) {
  const body = h('div');
  view.append(heading('Webhooks'), body);
  await context.every(3000, async () => {
    const { endpoints } = await api('/v1/webhooks/endpoints');
    fill(body, 
      table(
        [
          ['Endpoint', (endpoint) => link(`/webhooks/${seg(endpoint.endpoint_id)}`, endpoint.endpoint_id)],
          ['URL', (endpoint) => h('code', {}, endpoint.url)],
          ['Topics', (endpoint) => endpoint.filter?.topics?.join(', ')],
          ['State', (endpoint) => badge(endpoint.state)],
          ['Description', (endpoint) => endpoint.description],
        ],
        endpoints,
        { empty: 'No webhook endpoints: POST /v1/webhooks/endpoints adds one.' },
      ),
    );
  });
}

export async function detail(view, context) {
  const id = context.params.endpoint;
  const path = `/v1/webhooks/endpoints/${seg(id)}`;
  const summary = h('div');
  const outcome = h('div', { class: 'outcome', role: 'status' });
  const attempts = h('div');
  view.append(heading(`Endpoint ${id}`), summary, outcome, section('Attempts', attempts));

  async function redeliver(message) {
    try {
      await api(`${path}/messages/${seg(message)}/redeliver`, { method: 'POST' });
      fill(outcome, `Redelivering ${message}.`);
    } catch (error) {
      fill(outcome, problem(error));
    }
  }

  await context.every(3000, async () => {
    const [endpoint, log] = await Promise.all([api(path), api(`${path}/attempts`, { query: { limit: 100 } })]);
    const stats = endpoint.stats || {};
    fill(summary, 
      facts([
        ['URL', h('code', {}, endpoint.url)],
        ['State', badge(endpoint.state)],
        ['Disabled because', endpoint.disabled_reason],
        ['Failing since', endpoint.failing_since ? time(endpoint.failing_since) : undefined],
        ['Topics', endpoint.filter?.topics?.join(', ')],
        ['Types', endpoint.filter?.types?.join(', ') || 'any'],
        ['Ordered', endpoint.ordered ? 'yes' : 'no'],
        ['Attempts', `${count(stats.attempts)} (${count(stats.succeeded)} succeeded, ${count(stats.failed)} failed)`],
        ['In flight', count(stats.in_flight)],
        ['Last success', stats.last_success_at ? time(stats.last_success_at) : undefined],
      ]),
    );
    fill(attempts, 
      table(
        [
          ['At', (attempt) => time(attempt.at)],
          ['Message', (attempt) => message(attempt.message_id)],
          ['Attempt', (attempt) => attempt.attempt],
          ['Outcome', (attempt) => badge(attempt.succeeded ? 'succeeded' : 'failed')],
          ['Status', (attempt) => attempt.status_code],
          ['Latency', (attempt) => (attempt.latency_ms !== undefined ? `${attempt.latency_ms} ms` : '')],
          ['Error', (attempt) => attempt.error],
          ['Trigger', (attempt) => attempt.trigger],
          ['', (attempt) => button('Redeliver', () => redeliver(attempt.message_id), { class: 'redeliver' })],
        ],
        log.attempts,
        { empty: 'No delivery attempt yet.' },
      ),
    );
  });
}

/** A message id, `<topic>.<partition>.<offset>`, linked to its event. */
function message(id) {
  const [, topic, partition, offset] = /^(.+)\.(\d+)\.(\d+)$/.exec(id) || [];
  const text = h('code', {}, id);
  return topic ? h('a', { href: `#/events/${seg(topic)}/${partition}/${offset}` }, text) : text;
}
