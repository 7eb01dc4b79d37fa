// The console's build: one HTML page and content-hashed assets in dist/, which the query
// service compiles into its binary. The output is deterministic (no timestamps, hashed
// names), so the suite rebuilds it and compares it with what is committed.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    sourcemap: false,
    target: "es2022",
    modulePreload: { polyfill: false },
    // One script and one stylesheet: the console is small, and fewer requests load faster.
    cssCodeSplit: false,
    rollupOptions: { output: { manualChunks: undefined } },
  },
  server: {
    // `npm run dev` against a query service on its default address.
    proxy: { "/v1": "http://127.0.0.1:8080" },
  },
});
