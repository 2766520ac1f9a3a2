// Jobs: the recent ones (from the transition events the job service
// publishes on topic `herald.jobs`, one per state change, subject = job id)
// and one job (`GET /v1/jobs/{job_id}`): status, parts, progress, result.

import { api, seg } from '../api.js';
import { badge, facts, field, fill, h, heading, json, link, section, table, time, values } from '../dom.js';

const TRANSITIONS = 'herald.jobs';
const RECENT = 200;

export async function list(view, context) {
  const form = h(
    'form',
    { class: 'controls', id: 'job-lookup' },
    field('Job id', h('input', { name: 'job', type: 'text', required: true, placeholder: 'job id' })),
    h('button', { type: 'submit' }, 'Show'),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    context.go(`/jobs/${seg(values(form).job.trim())}`);
  });
  const recent = h('div');
  view.append(heading('Jobs'), form, section('Recent jobs', recent));
  await context.every(3000, async () => {
    const jobs = await recentJobs();
    fill(recent, 
      table(
        [
          ['Job', (job) => link(`/jobs/${seg(job.id)}`, job.id)],
          ['Last transition', (job) => badge(job.state)],
          ['At', (job) => time(job.at)],
        ],
        jobs,
        { empty: 'No job has been submitted yet.' },
      ),
    );
  });
}

/** The latest transition of each job among the last events of `herald.jobs`, newest first. */
async function recentJobs() {
  const { topics } = await api('/v1/topics');
  if (!topics.some((topic) => topic.name === TRANSITIONS)) return [];
  const { partition_info: partitions } = await api(`/v1/topics/${seg(TRANSITIONS)}`);
  const reads = await Promise.all(
    partitions
      .filter((info) => info.end_offset > info.start_offset)
      .map((info) =>
        api(`/v1/topics/${seg(TRANSITIONS)}/events`, {
          query: {
            partition: info.partition,
            from_offset: Math.max(info.start_offset, info.end_offset - RECENT),
            limit: RECENT,
          },
        }),
      ),
  );
  const latest = new Map();
  for (const event of reads.flatMap((read) => read.events)) {
    const at = event.time || event.appendedat;
    const seen = latest.get(event.subject);
    if (!seen || seen.at <= at) {
      latest.set(event.subject, { id: event.subject, state: event.type.replace(/^herald\.job\./, ''), at });
    }
  }
  return [...latest.values()].sort((a, b) => (a.at < b.at ? 1 : -1)).slice(0, 100);
}

export async function detail(view, context) {
  const id = context.params.job;
  const body = h('div');
  view.append(heading(`Job ${id}`), body);
  await context.every(2000, async () => {
    const job = await api(`/v1/jobs/${seg(id)}`);
    fill(body, 
      facts([
        ['Status', badge(job.status)],
        ['Queue', link(`/topics/${seg(`jobs.${job.queue}`)}`, job.queue)],
        ['Progress', `${job.progress.done} of ${job.progress.total} parts${job.progress.reported !== undefined ? `, reported ${job.progress.reported}` : ''}${job.progress.message ? `: ${job.progress.message}` : ''}`],
        ['Created', time(job.created_at)],
        ['Updated', time(job.updated_at)],
        ['Deadline', job.deadline_at ? time(job.deadline_at) : undefined],
        ['Result kept until', job.expires_at ? time(job.expires_at) : undefined],
        ['Error', job.error],
        ['Missing parts', job.missing?.length ? job.missing.join(', ') : undefined],
        ['Result blob', job.result_blob],
      ]),
      job.parts.length
        ? section(
            'Parts',
            table(
              [
                ['Key', (part) => part.key],
                ['Status', (part) => badge(part.status)],
                ['Result', (part) => (part.result !== undefined ? h('code', {}, JSON.stringify(part.result)) : '')],
                ['Error', (part) => part.error],
              ],
              job.parts,
            ),
          )
        : null,
      job.result !== undefined ? section('Result', json(job.result)) : null,
      section('Request', json(job.data)),
    );
  });
}
