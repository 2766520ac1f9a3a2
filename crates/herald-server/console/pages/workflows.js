// Workflows: definitions and their versions, instances, one instance's
// step-by-step history, and its operator actions (cancel, suspend, resume,
// retry, re-run).

import { api, seg } from '../api.js';
import { badge, button, facts, fill, h, heading, json, link, problem, section, select, table, time, toggleDetail } from '../dom.js';

function instances(list, empty) {
  return table(
    [
      ['Instance', (instance) => link(`/workflow-instances/${seg(instance.instance_id)}`, instance.instance_id)],
      ['Workflow', (instance) => `${instance.namespace}/${instance.name}`],
      ['Version', (instance) => instance.version],
      ['Status', (instance) => badge(instance.status)],
      ['Started', (instance) => time(instance.started_at)],
      ['Ended', (instance) => time(instance.ended_at)],
    ],
    list,
    { empty },
  );
}

export async function list(view, context) {
  const definitions = h('div');
  const recent = h('div');
  view.append(heading('Workflows'), section('Definitions', definitions), section('Recent instances', recent));
  const { workflows } = await api('/v1/workflows');
  definitions.append(
    table(
      [
        ['Workflow', (workflow) => link(`/workflows/${seg(workflow.namespace)}/${seg(workflow.name)}`, `${workflow.namespace}/${workflow.name}`)],
        ['Versions', (workflow) => workflow.versions.join(', ')],
        ['Latest', (workflow) => workflow.latest],
      ],
      workflows,
      { empty: 'No workflow deployed yet: POST /v1/workflows deploys one.' },
    ),
  );
  await context.every(3000, async () => {
    const answer = await api('/v1/workflow-instances', { query: { limit: 50 } });
    fill(recent, instances(answer.instances, 'No instances yet.'));
  });
}

export async function definition(view, context) {
  const { namespace, name } = context.params;
  const path = `/v1/workflows/${seg(namespace)}/${seg(name)}`;
  const shown = await api(path, { query: { version: context.query.version } });
  const versions = select('version', shown.versions, shown.definition.version);
  versions.addEventListener('change', () => context.go(`/workflows/${seg(namespace)}/${seg(name)}`, { version: versions.value }));
  const started = h('div');
  view.append(
    heading(`Workflow ${namespace}/${name}`, versions),
    facts([
      ['Version', shown.definition.version],
      ['Deployed', time(shown.definition.deployed_at)],
    ]),
    section('Instances', started),
    section('Definition', json(shown.definition.document)),
  );
  await context.every(3000, async () => {
    const answer = await api('/v1/workflow-instances', { query: { namespace, name, limit: 50 } });
    fill(started, instances(answer.instances, 'No instances of this workflow yet.'));
  });
}

const ENDED = ['completed', 'faulted', 'cancelled'];

export async function instance(view, context) {
  const id = context.params.instance;
  const path = `/v1/workflow-instances/${seg(id)}`;
  const summary = h('div');
  const actions = h('div', { class: 'actions' });
  const outcome = h('div', { class: 'outcome', role: 'status' });
  const steps = h('div');
  view.append(heading(`Instance ${id}`), summary, actions, outcome, section('History', steps));

  async function act(verb) {
    try {
      const answer = await api(`${path}/${verb}`, { method: 'POST' });
      if (verb === 'rerun') {
        context.go(`/workflow-instances/${seg(answer.instance_id)}`);
        return;
      }
      // The engine acts on it shortly; the polled status shows when.
      fill(outcome, `Asked to ${verb}.`);
    } catch (error) {
      fill(outcome, problem(error));
    }
    await refresh();
  }

  async function refresh() {
    const [shown, history] = await Promise.all([api(path), api(`${path}/history`)]);
    fill(summary, 
      facts([
        ['Workflow', link(`/workflows/${seg(shown.namespace)}/${seg(shown.name)}`, `${shown.namespace}/${shown.name}`)],
        ['Version', shown.version],
        ['Status', badge(shown.status)],
        ['Started', time(shown.started_at)],
        ['Ended', time(shown.ended_at)],
        ['Error', shown.error ? h('code', {}, JSON.stringify(shown.error)) : undefined],
      ]),
      section('Input', json(shown.input)),
      shown.output !== undefined && shown.output !== null ? section('Output', json(shown.output)) : null,
    );
    const ended = ENDED.includes(shown.status);
    fill(actions, 
      ...[
        ['cancel', !ended],
        ['suspend', !ended && shown.status !== 'suspended'],
        ['resume', shown.status === 'suspended'],
        ['retry', shown.status === 'faulted'],
        ['rerun', ended],
      ]
        .filter(([, offered]) => offered)
        .map(([verb]) => button(verb[0].toUpperCase() + verb.slice(1), () => act(verb), { class: `action-${verb}` })),
    );
    const columns = [
      ['Task', (step) => step.task],
      ['Path', (step) => h('code', {}, step.path)],
      ['Status', (step) => badge(step.status)],
      ['Attempt', (step) => step.attempt],
      ['Started', (step) => time(step.started_at)],
      ['Ended', (step) => time(step.ended_at)],
    ];
    fill(steps, 
      table(columns, history.steps, {
        empty: 'No step has run yet.',
        rowAttrs: (step) => ({
          class: 'step',
          title: 'Click to show its input, output and error',
          onclick: (click) =>
            toggleDetail(click.currentTarget, { input: step.input, output: step.output, error: step.error }, columns.length),
        }),
      }),
    );
    return ended;
  }

  await context.every(2000, refresh);
}
