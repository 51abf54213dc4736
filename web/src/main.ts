import { mount } from 'svelte';
import './app.css';
import App from './App.svelte';

if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch(() => undefined);
}
// Ask the browser not to evict the sealed store under storage pressure.
navigator.storage?.persist?.().catch(() => undefined);

mount(App, { target: document.getElementById('app')! });
