// The event browser: read a partition from an offset or a time
// (`GET /v1/topics/{topic}/events`), filter by type and subject, open an
// event's JSON; and one event's page with its lineage where the server
// offers `GET /v1/lineage`.

import { api, offers, seg } from '../api.js';
import { button, facts, field, h, heading, json, link, section, select, table, time, toggleDetail, values } from '../dom.js';
import { topicChoice } from './topics.js';

export async function browser(view, context) {
  const query = context.query;
  const { names, topic } = await topicChoice(query);
  const form = h(
    'form',
    { class: 'controls', id: 'event-query' },
    field('Topic', select('topic', names, topic)),
    field('Partition', h('input', { name: 'partition', type: 'number', min: 0, value: query.partition || 0 })),
    field('From offset', h('input', { name: 'offset', type: 'number', min: 0, value: query.offset ?? '', placeholder: 'first kept' })),
    field('or from time', h('input', { name: 'time', type: 'text', value: query.time || '', placeholder: '2026-12-03T10:00:00Z' })),
    field('Limit', h('input', { name: 'limit', type: 'number', min: 1, max: 10000, value: query.limit || 50 })),
    field('Type', h('input', { name: 'type', type: 'text', value: query.type || '', placeholder: 'any' })),
    field('Subject prefix', h('input', { name: 'subject', type: 'text', value: query.subject || '', placeholder: 'any' })),
    h('button', { type: 'submit' }, 'Read'),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    context.go('/events', values(form));
  });
  const results = h('div', { id: 'event-results' });
  view.append(heading('Events'), form, results);
  if (!topic) {
    results.append(h('p', { class: 'empty' }, 'No topics yet.'));
    return;
  }
  const partition = Number(query.partition || 0);
  const extent = await partitionExtent(topic, partition);
  if (!extent) {
    results.append(h('p', { class: 'empty' }, `Topic ${topic} has no partition ${partition}.`));
    return;
  }
  results.append(
    h('p', { class: 'summary' }, `Partition ${partition} keeps offsets ${extent.start_offset} to ${extent.end_offset - 1} (end ${extent.end_offset}).`),
  );
  const from = query.offset === undefined || query.offset === '' ? extent.start_offset : Number(query.offset);
  if (!query.time && (from < extent.start_offset || from > extent.end_offset)) {
    results.append(h('p', { class: 'empty' }, `Offset ${from} is not kept: this partition keeps ${extent.start_offset} to ${extent.end_offset - 1}.`));
    return;
  }
  const answer = await api(`/v1/topics/${seg(topic)}/events`, {
    query: {
      partition,
      from_offset: query.time ? undefined : from,
      from_time: query.time || undefined,
      limit: query.limit || 50,
    },
  });
  // The filters apply to the page read: the REST read has none (the live
  // tail's SSE filters on the server).
  const shown = answer.events.filter(
    (event) =>
      (!query.type || event.type === query.type) &&
      (!query.subject || (event.subject || '').startsWith(query.subject)),
  );
  const wanted = query.time ? null : Number(query.offset);
  const columns = [
    ['Offset', (event) => link(`/events/${seg(topic)}/${event.partition}/${event.offset}`, event.offset)],
    ['Appended', (event) => time(event.appendedat)],
    ['Type', (event) => event.type],
    ['Subject', (event) => event.subject],
    ['Key', (event) => event.key],
    ['Id', (event) => h('code', {}, event.id)],
  ];
  results.append(
    h('p', { class: 'summary' }, `${shown.length} of ${answer.events.length} events read match.`),
    table(columns, shown, {
      empty: 'No event matches here.',
      rowAttrs: (event) => ({
        class: event.offset === wanted ? 'event selected' : 'event',
        'data-offset': event.offset,
        title: 'Click to show its JSON',
        onclick: (click) => {
          if (click.target.closest('a')) return;
          toggleDetail(click.currentTarget, event, columns.length);
        },
      }),
    }),
    answer.events.length
      ? button('Next page', () => context.go('/events', { ...query, offset: answer.next_offset, time: '' }))
      : null,
  );
}

/** A partition's `{start_offset, end_offset}`, or null when it has none of that number. */
async function partitionExtent(topic, partition) {
  const { partition_info: partitions } = await api(`/v1/topics/${seg(topic)}`);
  return partitions.find((info) => info.partition === partition) || null;
}

export async function detail(view, context) {
  const { topic, partition, offset } = context.params;
  view.append(heading(`Event ${topic} / ${partition} / ${offset}`, link(`/events?topic=${seg(topic)}&partition=${partition}&offset=${offset}`, 'Around it')));
  // Asked only where it can be: an offset retention removed is refused.
  const extent = await partitionExtent(topic, Number(partition));
  const kept = extent && Number(offset) >= extent.start_offset && Number(offset) < extent.end_offset;
  const answer = kept
    ? await api(`/v1/topics/${seg(topic)}/events`, { query: { partition, from_offset: offset, limit: 1 } })
    : { events: [] };
  const [event] = answer.events;
  if (!event || String(event.offset) !== String(offset)) {
    view.append(h('p', { class: 'empty' }, 'No event is kept at this offset.'));
    return;
  }
  view.append(
    facts([
      ['Id', h('code', {}, event.id)],
      ['Type', event.type],
      ['Source', event.source],
      ['Subject', event.subject],
      ['Key', event.key],
      ['Appended', time(event.appendedat)],
      ['Correlation id', event.correlationid ? link(`/tail?topic=${seg(topic)}&correlationid=${seg(event.correlationid)}&from=earliest`, event.correlationid) : undefined],
      ['Causation id', event.causationid],
    ]),
    section('JSON', json(event)),
    await lineage(topic, partition, offset),
  );
}

/**
 * The event's lineage (`GET /v1/lineage`), asked only of a server whose
 * /openapi.json lists it, so an older server shows a note, not a 404.
 */
async function lineage(topic, partition, offset) {
  let available = false;
  try {
    available = await offers('get', '/v1/lineage');
  } catch {
    available = false;
  }
  if (!available) {
    return section('Lineage', h('p', { class: 'empty', id: 'lineage' }, 'This server does not offer lineage queries (GET /v1/lineage).'));
  }
  const { nodes, truncated } = await api('/v1/lineage', { query: { topic, partition, offset } });
  // Each node comes after its parent: indenting by depth draws the tree.
  const what = (node) => {
    switch (node.kind) {
      case 'event':
        return `${node.type} on ${node.topic}/${node.partition}/${node.offset}`;
      case 'delivery':
        return `${node.group}: ${node.state}`;
      case 'webhook_attempt':
        return `${node.endpoint}: ${node.succeeded ? 'succeeded' : 'failed'} ${node.status_code ?? ''}`;
      default:
        return [node.name, node.status].filter(Boolean).join(': ');
    }
  };
  return section(
    'Lineage',
    h(
      'div',
      { id: 'lineage' },
      table(
        [
          ['Kind', (node) => h('span', { class: `tree depth-${Math.min(node.depth, 8)}` }, node.depth ? `└ ${node.kind}` : node.kind)],
          ['Id', (node) => h('code', {}, node.id)],
          ['What', what],
          ['At', (node) => (node.at ? time(node.at) : '')],
        ],
        nodes,
        {
          empty: 'Nothing followed from this event.',
          rowAttrs: (node) => ({ class: 'lineage-node', 'data-kind': node.kind, 'data-depth': String(node.depth) }),
        },
      ),
      truncated ? h('p', { class: 'empty' }, 'Cut short: too many nodes.') : null,
    ),
  );
}
