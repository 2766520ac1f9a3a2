// Log-in: the API key (`hrd_…`) or JWT the console sends with every call.
// It is checked with `GET /v1/auth/whoami` before it is kept, in this tab
// (sessionStorage) or, when asked, in this browser (localStorage).

import { api, apiKey, forgetApiKey, setApiKey } from '../api.js';
import { button, facts, field, fill, h, heading, json, problem, values } from '../dom.js';
import { identify } from '../app.js';

export async function page(view, context) {
  const outcome = h('div', { class: 'outcome', role: 'status' });
  const form = h(
    'form',
    { class: 'controls', id: 'login' },
    field('API key or JWT', h('input', { name: 'key', type: 'password', autocomplete: 'off', required: true, placeholder: 'hrd_…' })),
    h('label', { class: 'check' }, h('input', { name: 'remember', type: 'checkbox' }), ' remember in this browser'),
    h('button', { type: 'submit' }, 'Log in'),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const { key, remember } = values(form);
    try {
      const who = await api('/v1/auth/whoami', { key: key.trim() });
      setApiKey(key.trim(), Boolean(remember));
      await identify();
      fill(outcome, `Logged in as ${who.identity}.`);
      location.hash = `#${context.query.next || '/'}`;
    } catch (error) {
      fill(outcome, problem(error));
    }
  });
  view.append(
    heading('Log in'),
    h('p', {}, 'Herald asks for credentials when it listens beyond loopback. The key is sent as Authorization: Bearer on every call the console makes.'),
    form,
    outcome,
  );
  if (apiKey()) {
    view.append(
      button('Forget the key', async () => {
        forgetApiKey();
        await identify();
        fill(outcome, 'The key is forgotten.');
      }),
    );
  }
  // Without a key, asking would only earn a 401 where auth is on.
  if (apiKey()) {
    const who = await api('/v1/auth/whoami');
    view.append(facts([['Acting as', who.identity]]), json(who.permissions));
  }
}
