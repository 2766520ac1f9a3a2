// Event streams: one stream's metadata (`GET …/streams/{stream}`) and its
// history forward or backward from a version, page by page.

import { api, seg } from '../api.js';
import { button, facts, field, fill, h, heading, json, section, select, table, time, toggleDetail, values } from '../dom.js';
import { topicChoice } from './topics.js';

export async function page(view, context) {
  const query = context.query;
  const { names, topic } = await topicChoice(query);
  const form = h(
    'form',
    { class: 'controls', id: 'stream-query' },
    field('Topic (category)', select('topic', names, topic)),
    field('Stream', h('input', { name: 'stream', type: 'text', required: true, value: query.stream || '', placeholder: 'order-42' })),
    field('Direction', select('direction', ['forward', 'backward'], query.direction || 'forward')),
    field('From version', h('input', { name: 'from_version', type: 'number', min: 0, value: query.from_version ?? '', placeholder: 'first (or last)' })),
    field('Limit', h('input', { name: 'limit', type: 'number', min: 1, max: 1000, value: query.limit || 50 })),
    h('button', { type: 'submit' }, 'Read'),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    context.go('/streams', values(form));
  });
  view.append(heading('Streams'), form);
  if (!query.topic || !query.stream) {
    view.append(h('p', { class: 'empty' }, 'Name a topic and a stream (an aggregate id) to read its history.'));
    return;
  }
  const path = `/v1/topics/${seg(query.topic)}/streams/${seg(query.stream)}`;
  const [info, history] = await Promise.all([
    api(path),
    api(`${path}/events`, {
      query: { direction: query.direction, from_version: query.from_version, limit: query.limit || 50 },
    }),
  ]);
  const snapshot = h('div');
  const columns = [
    ['Version', (event) => event.version],
    ['Type', (event) => event.type],
    ['Appended', (event) => time(event.appendedat)],
    ['Id', (event) => h('code', {}, event.id)],
  ];
  view.append(
    section(
      `Stream ${info.stream}`,
      facts([
        ['Version', info.version],
        ['Created', time(info.created_at)],
        ['Updated', time(info.updated_at)],
        ['Deleted', info.deleted ? 'yes' : 'no'],
      ]),
      // A snapshot is optional: asked for only on request, so a stream
      // without one does not show a 404.
      button('Load snapshot', async () => {
        try {
          fill(snapshot, json(await api(`${path}/snapshot`)));
        } catch (error) {
          fill(snapshot, h('p', { class: 'empty' }, error.code === 'not_found' ? 'No snapshot.' : error.message));
        }
      }),
      snapshot,
    ),
    section(
      'History',
      table(columns, history.events, {
        empty: 'No events from this version.',
        rowAttrs: (event) => ({
          class: 'event',
          title: 'Click to show its JSON',
          onclick: (click) => toggleDetail(click.currentTarget, event, columns.length),
        }),
      }),
      history.next_version !== null && history.next_version !== undefined
        ? button('Next page', () => context.go('/streams', { ...query, from_version: history.next_version }))
        : null,
    ),
  );
}
