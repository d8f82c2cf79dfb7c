import { defineConfig } from "vite";

// The gateway serves dist/ (http.web_dir) at `/`; every asset is bundled, none from a CDN.
export default defineConfig({
  base: "/",
  build: { outDir: "dist", assetsDir: "assets", emptyOutDir: true, sourcemap: false },
  server: {
    // `npm run dev` against a running `suho up`.
    proxy: {
      "/api": "http://127.0.0.1:8080",
      "/ws": { target: "ws://127.0.0.1:8080", ws: true },
    },
  },
});
