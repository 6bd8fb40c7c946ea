// manta dashboard: local times, copy buttons, the stop button, live refresh
// over server-sent events, and log tails. No build step, no dependencies.
(() => {
  'use strict';
  const content = () => document.getElementById('content');

  function localTimes(root) {
    root.querySelectorAll('time[data-ms]').forEach((element) => {
      const date = new Date(Number(element.dataset.ms));
      element.textContent = date.toLocaleString();
      element.title = date.toISOString();
    });
  }

  function setLive(on) {
    const badge = document.getElementById('live');
    if (badge) {
      badge.classList.toggle('off', !on);
      badge.textContent = on ? 'live' : 'offline';
    }
  }

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    const area = document.createElement('textarea');
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand('copy');
    area.remove();
  }

  document.addEventListener('click', async (event) => {
    const copy = event.target.closest('button.copy');
    if (copy) {
      let copied = true;
      try {
        await copyText(copy.dataset.copy);
      } catch (_) {
        copied = false;
      }
      copy.classList.add(copied ? 'copied' : 'copy-failed');
      setTimeout(() => copy.classList.remove('copied', 'copy-failed'), 1200);
      return;
    }
    const post = event.target.closest('button[data-post]');
    if (post) {
      if (post.dataset.confirm && !window.confirm(post.dataset.confirm)) return;
      post.disabled = true;
      try {
        const response = await fetch(post.dataset.post, {
          method: 'POST',
          headers: { 'X-Manta-Dashboard': '1' },
          credentials: 'same-origin',
        });
        if (!response.ok) window.alert(`Failed: ${response.status} ${await response.text()}`);
      } catch (error) {
        window.alert(`Failed: ${error}`);
      }
      post.disabled = false;
      refresh(true);
    }
  });

  let busy = false;
  async function refresh(force) {
    if (busy || (document.hidden && !force)) return;
    const active = document.activeElement;
    if (!force && active && ['INPUT', 'SELECT', 'TEXTAREA'].includes(active.tagName)) return;
    if (!force && String(window.getSelection ? window.getSelection() : '')) return;
    busy = true;
    try {
      const response = await fetch(location.href, { headers: { 'X-Partial': '1' }, credentials: 'same-origin' });
      if (response.redirected && new URL(response.url).pathname === '/login') {
        location.href = response.url;
        return;
      }
      if (!response.ok) {
        setLive(false);
        return;
      }
      const next = document.createElement('main');
      next.innerHTML = await response.text();
      next.querySelectorAll('[data-keep]').forEach((element) => {
        const kept = document.querySelector(`#content [data-keep="${element.dataset.keep}"]`);
        if (kept) element.replaceWith(kept);
      });
      content().replaceChildren(...next.childNodes);
      start(content());
      setLive(true);
    } catch (_) {
      setLive(false);
    } finally {
      busy = false;
    }
  }

  function append(pre, text) {
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.append(text);
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  // A submitted job's driver log, over the Jobs API's WebSocket.
  function tailJob(pre) {
    if (pre.dataset.started) return;
    pre.dataset.started = '1';
    const url = new URL(pre.dataset.tail, location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(url);
    socket.onmessage = (message) => append(pre, message.data);
    socket.onclose = () => { pre.dataset.closed = '1'; };
  }

  // A log file, polled from its last offset while "Follow" is on.
  function followFile(pre) {
    if (pre.dataset.started) return;
    pre.dataset.started = '1';
    pre.scrollTop = pre.scrollHeight;
    const poll = async () => {
      const follow = document.getElementById('follow');
      if (follow && follow.checked && !document.hidden) {
        const query = new URLSearchParams({ node_id: pre.dataset.node, filename: pre.dataset.file, offset: pre.dataset.offset });
        try {
          const response = await fetch(`/api/v0/logs/file?${query}`, { credentials: 'same-origin' });
          if (response.ok) {
            const text = await response.text();
            pre.dataset.offset = response.headers.get('X-Next-Offset') || pre.dataset.offset;
            if (text) append(pre, text);
          }
        } catch (_) { /* the next poll retries */ }
      }
      setTimeout(poll, 1000);
    };
    setTimeout(poll, 1000);
  }

  function start(root) {
    localTimes(root);
    root.querySelectorAll('pre[data-tail]').forEach(tailJob);
    root.querySelectorAll('pre[data-file]').forEach(followFile);
  }

  document.addEventListener('DOMContentLoaded', () => {
    start(document);
    if (!content() || !window.EventSource) return;
    const events = new EventSource('/events');
    events.addEventListener('tick', (event) => {
      if (event.data !== '0') refresh(false);
    });
    events.onopen = () => setLive(true);
    events.onerror = () => setLive(false);
  });
})();
