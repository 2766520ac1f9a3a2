// Topics: the list (partitions, retention, size, publish rate) and one
// topic (settings, partitions with their offsets and rates, its groups).

import { api, sample, seg } from '../api.js';
import { bytes, count, facts, fill, h, heading, link, millis, rate, section, sparkline, table, time } from '../dom.js';

// A console for an operator, not a crawler: beyond this many topics the
// list shows names only, without per-topic descriptions.
const DESCRIBE_AT_MOST = 100;

/**
 * Every topic with its partitions (`GET /v1/topics`, then `GET
 * /v1/topics/{topic}` for each) and its publish rate from the growth of
 * its end offsets since the previous call.
 */
export async function describeTopics() {
  const { topics } = await api('/v1/topics');
  const described = await Promise.all(
    topics.map(async (topic, index) => {
      if (index >= DESCRIBE_AT_MOST) return { ...topic, partition_info: null };
      try {
        return await api(`/v1/topics/${seg(topic.name)}`);
      } catch (error) {
        // Deleted between the list and the describe.
        if (error.code === 'topic_not_found') return null;
        throw error;
      }
    }),
  );
  return described.filter(Boolean).map((topic) => {
    const partitions = topic.partition_info || [];
    const ends = partitions.reduce((sum, info) => sum + info.end_offset, 0);
    const { rate: perSecond, history } = sample(`topic:${topic.name}`, ends);
    return {
      ...topic,
      events: partitions.reduce((sum, info) => sum + info.end_offset - info.start_offset, 0),
      bytes: partitions.reduce((sum, info) => sum + info.bytes, 0),
      ends,
      rate: perSecond,
      history,
    };
  });
}

/** The topics' names and the one a page's query picks (else the first). */
export async function topicChoice(query) {
  const { topics } = await api('/v1/topics');
  const names = topics.map((topic) => topic.name);
  return { names, topic: query.topic || names[0] || '' };
}

export function retention(spec) {
  const limits = [];
  if (spec?.max_age_ms) limits.push(millis(spec.max_age_ms));
  if (spec?.max_bytes) limits.push(bytes(spec.max_bytes));
  if (spec?.max_events) limits.push(`${count(spec.max_events)} events`);
  return limits.length ? limits.join(', ') : 'forever';
}

export async function list(view, context) {
  const body = h('div');
  view.append(heading('Topics'), body);
  await context.every(2000, async () => {
    const topics = await describeTopics();
    fill(body, 
      table(
        [
          ['Topic', (topic) => link(`/topics/${seg(topic.name)}`, topic.name)],
          ['Partitions', (topic) => topic.partitions],
          ['Fsync', (topic) => topic.fsync],
          ['Retention', (topic) => retention(topic.retention)],
          ['Events kept', (topic) => count(topic.events)],
          ['Size', (topic) => bytes(topic.bytes)],
          ['Publish rate', (topic) => rate(topic.rate)],
          ['', (topic) => sparkline(topic.history, { label: `${topic.name} publish rate` })],
        ],
        topics,
        { empty: 'No topics yet: POST /v1/topics creates one.' },
      ),
    );
  });
}

export async function detail(view, context) {
  const name = context.params.topic;
  const path = `/v1/topics/${seg(name)}`;
  const settings = h('div');
  const partitions = h('div');
  const groupList = h('div');
  view.append(
    heading(
      `Topic ${name}`,
      link(`/events?topic=${seg(name)}`, 'Browse events'),
      link(`/tail?topic=${seg(name)}`, 'Live tail'),
    ),
    section('Settings', settings),
    section('Partitions', partitions),
    section('Consumer groups', groupList),
  );
  const { groups } = await api(`${path}/groups`);
  groupList.append(
    table(
      [
        ['Group', (group) => link(`/groups/${seg(name)}/${seg(group.name)}`, group.name)],
        ['Mode', (group) => group.mode],
        ['Created', (group) => time(group.created_at)],
      ],
      groups,
      { empty: 'No consumer groups on this topic.' },
    ),
  );
  await context.every(2000, async () => {
    const topic = await api(path);
    fill(settings, 
      facts([
        ['Partitions', topic.partitions],
        ['Fsync', topic.fsync === 'interval' ? `every ${millis(topic.fsync_interval_ms)}` : topic.fsync],
        ['Retention', retention(topic.retention)],
        ['Dedup window', millis(topic.dedup_window_ms)],
        ['Max event size', bytes(topic.max_event_bytes)],
        ['Dead-letter topic', topic.dead_letter_topic ? link(`/topics/${seg(topic.dead_letter_topic)}`, topic.dead_letter_topic) : 'none'],
        ['Created', time(topic.created_at)],
      ]),
    );
    fill(partitions, 
      table(
        [
          ['Partition', (info) => info.partition],
          ['Start offset', (info) => count(info.start_offset)],
          ['End offset', (info) => count(info.end_offset)],
          ['Events kept', (info) => count(info.end_offset - info.start_offset)],
          ['Size', (info) => bytes(info.bytes)],
          ['Publish rate', (info) => rate(info.rate)],
          ['', (info) => sparkline(info.history, { label: `partition ${info.partition} publish rate` })],
          ['', (info) => link(`/events?topic=${seg(name)}&partition=${info.partition}&offset=${info.start_offset}`, 'read')],
        ],
        topic.partition_info.map((info) => ({
          ...info,
          ...sample(`partition:${name}:${info.partition}`, info.end_offset),
        })),
      ),
    );
  });
}
