// The live tail: a topic's new events as they are appended, over SSE
// (`GET /v1/topics/{topic}/events/stream`), filtered on the server by type,
// subject prefix and correlation id. The browser's EventSource resumes
// with Last-Event-ID after a broken connection.

import { seg, sseUrl } from '../api.js';
import { field, fill, h, heading, link, problem, select, table, time, toggleDetail, values } from '../dom.js';
import { topicChoice } from './topics.js';

// Rows kept on the page; older ones drop off the bottom.
const KEEP = 500;

export async function page(view, context) {
  const query = context.query;
  const { names, topic } = await topicChoice(query);
  const form = h(
    'form',
    { class: 'controls', id: 'tail-query' },
    field('Topic', select('topic', names, topic)),
    field('From', select('from', [['latest', 'new events'], ['earliest', 'the first kept']], query.from || 'latest')),
    field('Types', h('input', { name: 'type', type: 'text', value: query.type || '', placeholder: 'any (comma-separated)' })),
    field('Subject prefix', h('input', { name: 'subject', type: 'text', value: query.subject || '', placeholder: 'any' })),
    field('Correlation id', h('input', { name: 'correlationid', type: 'text', value: query.correlationid || '', placeholder: 'any' })),
    h('button', { type: 'submit' }, 'Follow'),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    context.go('/tail', values(form));
  });
  const state = h('span', { class: 'badge', id: 'tail-state' }, 'connecting');
  const count = h('span', { id: 'tail-count' }, '0');
  const columns = [
    ['Position', (event) => link(`/events/${seg(topic)}/${event.partition}/${event.offset}`, `${event.partition}:${event.offset}`)],
    ['Appended', (event) => time(event.appendedat)],
    ['Type', (event) => event.type],
    ['Subject', (event) => event.subject],
    ['Id', (event) => h('code', {}, event.id)],
  ];
  const rows = h('tbody', { id: 'tail-rows' });
  const problems = h('div');
  view.append(
    heading('Live tail', state),
    form,
    h('p', { class: 'summary' }, count, ' events received.'),
    problems,
    h('table', {}, h('thead', {}, h('tr', {}, columns.map(([title]) => h('th', {}, title)))), rows),
  );
  if (!topic) {
    state.textContent = 'no topic';
    return;
  }
  const source = new EventSource(
    sseUrl(`/v1/topics/${seg(topic)}/events/stream`, {
      from: query.from || 'latest',
      type: query.type,
      subject: query.subject,
      correlationid: query.correlationid,
    }),
  );
  context.onLeave(() => source.close());
  let received = 0;
  source.onopen = () => {
    state.textContent = 'live';
    state.className = 'badge badge-live';
  };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    received += 1;
    count.textContent = String(received);
    rows.prepend(
      h(
        'tr',
        {
          class: 'event',
          'data-id': event.id,
          onclick: (click) => {
            if (!click.target.closest('a')) toggleDetail(click.currentTarget, event, columns.length);
          },
        },
        columns.map(([, cell]) => h('td', {}, cell(event) ?? '')),
      ),
    );
    while (rows.children.length > KEEP) rows.lastElementChild.remove();
  };
  // The server's own error (a problem document) ends the stream.
  source.addEventListener('error', (message) => {
    if (message.data) {
      const body = JSON.parse(message.data);
      fill(problems, problem({ code: body.code, message: body.detail || message.data }));
      source.close();
    }
    state.textContent = source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting';
    state.className = 'badge badge-down';
  });
}
