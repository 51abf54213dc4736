// Vite builds the app shell, the engine's worker and the service worker.
// The service worker is written after the bundle, with the list of every
// file the shell needs, so the app opens offline (`src/sw.js`).
import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';

function serviceWorker() {
  return {
    name: 'sitrep-service-worker',
    apply: 'build',
    generateBundle(_options, bundle) {
      const files = Object.keys(bundle).filter((f) => !f.endsWith('.map'));
      const shell = ['/', '/manifest.webmanifest', '/icon.svg', ...files.map((f) => '/' + f)];
      const version = createHash('sha256').update(files.sort().join('\n')).digest('hex').slice(0, 16);
      const src = readFileSync(new URL('./src/sw.js', import.meta.url), 'utf8')
        .replace('__SHELL__', JSON.stringify(shell))
        .replace('__VERSION__', JSON.stringify(version));
      this.emitFile({ type: 'asset', fileName: 'sw.js', source: src });
    },
  };
}

export default defineConfig({
  plugins: [svelte(), serviceWorker()],
  build: {
    target: 'es2022',
    assetsInlineLimit: 0,
    sourcemap: false,
    reportCompressedSize: false,
  },
  worker: { format: 'es' },
  server: { proxy: { '/v1': { target: 'http://127.0.0.1:8448', ws: true }, '/healthz': 'http://127.0.0.1:8448' } },
});
