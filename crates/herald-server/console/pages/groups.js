// Consumer groups: every group of every topic, and one group: members,
// lag per partition over time (polled), in flight, reset, and its dead
// letters with inspect and redrive.

import { api, gauge, seg } from '../api.js';
import { button, count, facts, field, fill, h, heading, link, problem, section, select, sparkline, table, time, toggleDetail, values } from '../dom.js';

export async function list(view, context) {
  const body = h('div');
  view.append(heading('Consumer groups'), body);
  await context.every(3000, async () => {
    const { topics } = await api('/v1/topics');
    const perTopic = await Promise.all(
      topics.map(async (topic) => {
        const { groups } = await api(`/v1/topics/${seg(topic.name)}/groups`);
        return Promise.all(
          groups.map(async (group) => ({
            topic: topic.name,
            ...(await api(`/v1/topics/${seg(topic.name)}/groups/${seg(group.name)}`)),
          })),
        );
      }),
    );
    fill(body, 
      table(
        [
          ['Topic', (group) => link(`/topics/${seg(group.topic)}`, group.topic)],
          ['Group', (group) => link(`/groups/${seg(group.topic)}/${seg(group.name)}`, group.name)],
          ['Mode', (group) => group.mode],
          ['Members', (group) => group.members.length],
          ['Lag', (group) => count(group.partitions.reduce((sum, part) => sum + part.lag, 0))],
          ['In flight', (group) => count(group.in_flight)],
          ['Dead letters', (group) => count(group.dead_letters)],
        ],
        perTopic.flat(),
        { empty: 'No consumer groups yet.' },
      ),
    );
  });
}

export async function detail(view, context) {
  const { topic, group } = context.params;
  const path = `/v1/topics/${seg(topic)}/groups/${seg(group)}`;
  const summary = h('div');
  const members = h('div');
  const partitions = h('div');
  const letters = h('div', { id: 'dead-letters' });
  const outcome = h('div', { class: 'outcome', role: 'status' });
  view.append(
    heading(`Group ${group}`, link(`/topics/${seg(topic)}`, `on ${topic}`)),
    summary,
    section('Partitions', partitions),
    section('Members', members),
    section('Reset', resetForm(path, outcome, () => refresh()), outcome),
    section('Dead letters', letters),
  );

  async function refresh() {
    const status = await api(path);
    fill(summary, 
      facts([
        ['Mode', status.mode],
        ['In flight', count(status.in_flight)],
        ['Pending', count(status.pending)],
        ['Dead letters', count(status.dead_letters)],
        ['Generation', status.mode === 'stream' ? status.generation : undefined],
        ['Ack wait', status.ack_wait_ms !== undefined ? `${status.ack_wait_ms} ms` : undefined],
        ['Max deliveries', status.max_deliveries],
        ['Created', time(status.created_at)],
      ]),
    );
    fill(partitions, 
      table(
        [
          ['Partition', (part) => part.partition],
          ['Committed', (part) => count(part.committed)],
          ['End offset', (part) => count(part.end_offset)],
          ['Lag', (part) => h('span', { class: 'lag', 'data-partition': part.partition }, count(part.lag))],
          ['Lag over time', (part) => sparkline(gauge(`lag:${topic}:${group}:${part.partition}`, part.lag), { label: `partition ${part.partition} lag` })],
          ['Assigned to', (part) => part.assigned_to],
        ],
        status.partitions,
      ),
    );
    fill(members, 
      table(
        [
          ['Member', (member) => member.member],
          ['Partitions', (member) => member.partitions.join(', ')],
          ['Idle', (member) => `${member.idle_ms} ms`],
        ],
        status.members,
        { empty: 'No member is connected.' },
      ),
    );
  }

  async function refreshLetters() {
    const { events } = await api(`${path}/dead-letters`, { query: { limit: 100 } });
    const columns = [
      ['Id', (letter) => letter.id],
      ['Original', (letter) => link(`/events/${seg(topic)}/${letter.original.partition}/${letter.original.offset}`, `${letter.original.partition}:${letter.original.offset}`)],
      ['Type', (letter) => letter.event?.type ?? '(erased)'],
      ['Reason', (letter) => letter.reason],
      ['Attempts', (letter) => letter.attempts],
      ['Dead since', (letter) => time(letter.dead_at)],
      [
        '',
        (letter) => [
          button('Inspect', (element) => toggleDetail(element.closest('tr'), letter, columns.length), { class: 'inspect' }),
          ' ',
          button('Redrive', () => redrive([letter.id]), { class: 'redrive' }),
        ],
      ],
    ];
    fill(letters, 
      table(columns, events, {
        empty: 'No dead letters.',
        rowAttrs: (letter) => ({ class: 'dead-letter', 'data-id': letter.id }),
      }),
      events.length ? button('Redrive all', () => redrive(undefined), { class: 'redrive-all' }) : null,
    );
  }

  async function redrive(ids) {
    try {
      const { redriven } = await api(`${path}/dead-letters/redrive`, { method: 'POST', body: ids ? { ids } : {} });
      fill(outcome, `Redriven: ${redriven}.`);
    } catch (error) {
      fill(outcome, problem(error));
    }
    await Promise.all([refresh(), refreshLetters()]);
  }

  await refreshLetters();
  await context.every(2000, refresh);
}

/** `POST …/reset` to earliest, latest, an offset or a time; asks twice. */
function resetForm(path, outcome, after) {
  const to = select('to', [['earliest', 'earliest'], ['latest', 'latest'], ['offset', 'an offset'], ['time', 'a time']], 'earliest');
  const at = h('input', { name: 'at', type: 'text', placeholder: 'offset or RFC 3339 time' });
  const confirm = h('button', { type: 'submit', class: 'danger', hidden: true }, 'Confirm reset');
  const form = h(
    'form',
    { class: 'controls', id: 'reset' },
    field('Reset to', to),
    field('Offset or time', at),
    button('Reset…', () => {
      confirm.hidden = false;
    }),
    confirm,
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    confirm.hidden = true;
    const { to: where, at: value } = values(form);
    const target = where === 'offset' ? { offset: Number(value) } : where === 'time' ? { time: value } : where;
    try {
      await api(`${path}/reset`, { method: 'POST', body: { to: target } });
      fill(outcome, `Reset to ${typeof target === 'string' ? target : value}.`);
    } catch (error) {
      fill(outcome, problem(error));
    }
    await after();
  });
  return form;
}
