// The emoji picker: the full Unicode set from the vendored
// unicode-emoji-json data (MIT, see /vendor/unicode-emoji-json/LICENSE),
// with search, categories, skin tones and recently used. Emoji are inserted
// as Unicode text.

const RECENT_KEY = 'securechat.recentEmoji';
/** @type {Promise<{name: string, emojis: [string, string, number][]}[]>|null} */
let data = null;

function load() {
  data ??= fetch('/vendor/unicode-emoji-json/groups.json').then((r) => r.json());
  return data;
}

/** @param {string} emoji @param {number} skin @param {string} tone */
function withTone(emoji, skin, tone) {
  if (!skin || !tone) return emoji;
  // The modifier goes after the first code point (before any variation
  // selector or joiner).
  const [first, ...rest] = Array.from(emoji);
  const tail = rest.join('').replace(/^\uFE0F/, '');
  return first + tone + tail;
}

/**
 * Wires the picker to its button and calls `insert` with the chosen emoji.
 * @param {(emoji: string) => void} insert
 */
export function setupEmoji(insert) {
  const button = /** @type {HTMLButtonElement} */ (document.getElementById('emoji-button'));
  const picker = /** @type {HTMLElement} */ (document.getElementById('emoji-picker'));
  const search = /** @type {HTMLInputElement} */ (document.getElementById('emoji-search'));
  const tone = /** @type {HTMLSelectElement} */ (document.getElementById('emoji-tone'));
  const groupsEl = /** @type {HTMLElement} */ (document.getElementById('emoji-groups'));
  const grid = /** @type {HTMLElement} */ (document.getElementById('emoji-grid'));
  let group = 'Recent';

  const recent = () => JSON.parse(localStorage.getItem(RECENT_KEY) ?? '[]');

  async function draw() {
    const groups = await load();
    groupsEl.replaceChildren();
    for (const name of ['Recent', ...groups.map((g) => g.name)]) {
      const b = document.createElement('button');
      b.type = 'button';
      b.role = 'tab';
      b.textContent = name;
      b.setAttribute('aria-selected', String(name === group && !search.value));
      b.addEventListener('click', () => {
        group = name;
        search.value = '';
        draw();
      });
      groupsEl.appendChild(b);
    }
    const q = search.value.trim().toLowerCase();
    /** @type {[string, string, number][]} */
    let list;
    if (q) {
      list = groups.flatMap((g) => g.emojis).filter((e) => e[1].includes(q));
    } else if (group === 'Recent') {
      const all = new Map(groups.flatMap((g) => g.emojis).map((e) => [e[0], e]));
      list = recent().map((e) => all.get(e) ?? [e, 'recent', 0]);
      if (!list.length) list = groups[0].emojis.slice(0, 40);
    } else {
      list = groups.find((g) => g.name === group)?.emojis ?? [];
    }
    grid.replaceChildren();
    for (const [emoji, name, skin] of list.slice(0, 600)) {
      const b = document.createElement('button');
      b.type = 'button';
      const shown = withTone(emoji, skin, tone.value);
      b.textContent = shown;
      b.title = name;
      b.setAttribute('aria-label', name);
      b.addEventListener('click', () => choose(shown, emoji));
      grid.appendChild(b);
    }
  }

  function choose(shown, base) {
    const r = [base, ...recent().filter((e) => e !== base)].slice(0, 32);
    localStorage.setItem(RECENT_KEY, JSON.stringify(r));
    insert(shown);
    close();
  }

  function open() {
    picker.hidden = false;
    button.setAttribute('aria-expanded', 'true');
    draw();
    search.focus();
  }

  function close() {
    picker.hidden = true;
    button.setAttribute('aria-expanded', 'false');
  }

  button.addEventListener('click', () => (picker.hidden ? open() : close()));
  search.addEventListener('input', () => draw());
  tone.addEventListener('change', () => draw());
  picker.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      close();
      button.focus();
    }
  });
}
