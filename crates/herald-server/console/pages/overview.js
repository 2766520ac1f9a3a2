// Overview: readiness, what is stored, and the publish rate (from the
// growth of partition end offsets between polls), busiest topics first.

import { openapiDocument, readiness, sample, seg } from '../api.js';
import { badge, bytes, count, fill, h, heading, json, link, rate, section, sparkline, table } from '../dom.js';
import { describeTopics } from './topics.js';

export async function page(view, context) {
  const tiles = h('div', { class: 'tiles' });
  const busiest = h('div');
  const health = h('div');
  view.append(heading('Overview'), tiles, section('Busiest topics', busiest), section('Health', health));
  const version = await openapiDocument()
    .then((doc) => doc.info?.version)
    .catch(() => null);
  await context.every(2000, async () => {
    const [ready, topics] = await Promise.all([readiness(), describeTopics()]);
    const ends = topics.reduce((sum, topic) => sum + topic.ends, 0);
    const total = sample('overview:ends', ends);
    fill(tiles, 
      tile('Status', badge(ready.status || (ready.ok ? 'ready' : 'not ready'))),
      tile('Publish rate', rate(total.rate), sparkline(total.history, { width: 160, label: 'publish rate' })),
      tile('Topics', count(topics.length)),
      tile('Partitions', count(topics.reduce((sum, topic) => sum + topic.partitions, 0))),
      tile('Events kept', count(topics.reduce((sum, topic) => sum + topic.events, 0))),
      tile('Storage', bytes(topics.reduce((sum, topic) => sum + topic.bytes, 0))),
      version ? tile('Version', version) : null,
    );
    const ranked = [...topics].sort((a, b) => (b.rate ?? 0) - (a.rate ?? 0) || b.bytes - a.bytes).slice(0, 10);
    fill(busiest, 
      table(
        [
          ['Topic', (topic) => link(`/topics/${seg(topic.name)}`, topic.name)],
          ['Publish rate', (topic) => rate(topic.rate)],
          ['', (topic) => sparkline(topic.history, { label: `${topic.name} publish rate` })],
          ['Events kept', (topic) => count(topic.events)],
          ['Size', (topic) => bytes(topic.bytes)],
        ],
        ranked,
        { empty: 'No topics yet.' },
      ),
    );
    fill(health, 
      ready.problems?.length ? json(ready.problems) : h('p', {}, `GET /readyz: ${ready.status || 'unknown'}`),
    );
  });
}

function tile(title, ...value) {
  return h('div', { class: 'tile' }, h('div', { class: 'tile-title' }, title), h('div', { class: 'tile-value' }, value));
}
