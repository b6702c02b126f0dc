// gru-lm's runtime for the browser: one step of the model over its weights, and the draw.
//
// No dependency: the weights come from model.js (written by `gru-lm export --web`), which sets
// globalThis.GRU_LM_MODEL = {meta, tensors, data}: `data` is every tensor as little-endian float32, base64,
// one after the other; `tensors` names each one's offset (in floats) and shape. Loading them from a script
// rather than with fetch() is what lets the page work from file:// as well as from any static server.
//
// The step is the one of gru_lm/model/cells.py, in the same gate order as torch (GRU r, z, n; LSTM i, f, g, o),
// with the first layer's input projection embed(c) W_ih + b_ih precomputed for every character (a V × G·H
// table, as gru_lm.generation.sample.Stepper does). Arithmetic is JavaScript's double precision over the
// float32 weights, so it agrees with the float32 model to well within 1e-4.
"use strict";
(function (root) {
  function decodeFloats(base64) {
    const bytes = atob(base64);
    const n = bytes.length >> 2;
    const buf = new ArrayBuffer(n * 4);
    const u8 = new Uint8Array(buf);
    for (let i = 0; i < bytes.length; i++) u8[i] = bytes.charCodeAt(i);
    const view = new DataView(buf);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true); // little-endian on every machine
    return out;
  }

  // out[o + r] = W[w + r·cols + ·] · x + b[r] for r < rows; four partial sums let the CPU overlap the adds.
  function matvec(W, w, rows, cols, x, b, bOff, out, o) {
    for (let r = 0; r < rows; r++) {
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, p = w + r * cols, c = 0;
      for (; c + 3 < cols; c += 4, p += 4) {
        s0 += W[p] * x[c];
        s1 += W[p + 1] * x[c + 1];
        s2 += W[p + 2] * x[c + 2];
        s3 += W[p + 3] * x[c + 3];
      }
      for (; c < cols; c++, p++) s0 += W[p] * x[c];
      out[o + r] = s0 + s1 + s2 + s3 + b[bOff + r];
    }
  }

  function sigmoid(a) {
    return 1 / (1 + Math.exp(-a));
  }

  class Model {
    constructor(spec) {
      const floats = decodeFloats(spec.data);
      const take = (name) => {
        const t = spec.tensors[name];
        const size = t.shape.reduce((a, b) => a * b, 1);
        return floats.subarray(t.offset, t.offset + size);
      };
      const m = spec.meta;
      this.meta = m;
      this.cell = m.cell;
      this.resetAfter = m.reset_after;
      this.H = m.hidden_size;
      this.V = m.vocab_size;
      this.G = { gru: 3, lstm: 4, rnn: 1 }[m.cell];
      this.vocab = m.vocab;
      this.ids = new Map(m.vocab.map((ch, i) => [ch, i]));
      this.table = take("table");
      this.layers = [];
      for (let k = 0; k < m.layers; k++) {
        this.layers.push({
          wih: k ? take(`w_ih${k}`) : null,
          bih: k ? take(`b_ih${k}`) : null,
          whh: take(`w_hh${k}`),
          bhh: take(`b_hh${k}`),
        });
      }
      this.headW = take("head_w");
      this.headB = take("head_b");
      const GH = this.G * this.H;
      this.gi = new Float64Array(GH);
      this.gh = new Float64Array(GH);
      this.rh = new Float64Array(this.H);
      this.logits = new Float64Array(this.V);
    }

    // Every layer's state from zeros: h (and c for the LSTM), one Float64Array of H each.
    zeroState() {
      return this.layers.map(() => ({ h: new Float64Array(this.H), c: new Float64Array(this.H) }));
    }

    // Character id in, state updated in place; returns the next character's logits (a buffer reused by every step).
    step(id, state) {
      const H = this.H, G = this.G, gi = this.gi, gh = this.gh;
      let x = null;
      for (let k = 0; k < this.layers.length; k++) {
        const L = this.layers[k], h = state[k].h;
        if (k === 0) {
          const t = this.table, o = id * G * H;
          for (let j = 0; j < G * H; j++) gi[j] = t[o + j];
        } else {
          matvec(L.wih, 0, G * H, H, x, L.bih, 0, gi, 0);
        }
        if (this.cell === "gru") {
          if (this.resetAfter) {
            matvec(L.whh, 0, 3 * H, H, h, L.bhh, 0, gh, 0);
            for (let j = 0; j < H; j++) {
              const r = sigmoid(gi[j] + gh[j]);
              const z = sigmoid(gi[H + j] + gh[H + j]);
              const n = Math.tanh(gi[2 * H + j] + r * gh[2 * H + j]);
              h[j] = n + z * (h[j] - n); // z ⊙ h + (1 − z) ⊙ n
            }
          } else {
            matvec(L.whh, 0, 2 * H, H, h, L.bhh, 0, gh, 0);
            const rh = this.rh;
            for (let j = 0; j < H; j++) rh[j] = sigmoid(gi[j] + gh[j]) * h[j];
            matvec(L.whh, 2 * H * H, H, H, rh, L.bhh, 2 * H, gh, 2 * H); // (r ⊙ h) W_hn + b_hn
            for (let j = 0; j < H; j++) {
              const z = sigmoid(gi[H + j] + gh[H + j]);
              const n = Math.tanh(gi[2 * H + j] + gh[2 * H + j]);
              h[j] = n + z * (h[j] - n);
            }
          }
        } else if (this.cell === "lstm") {
          const c = state[k].c;
          matvec(L.whh, 0, 4 * H, H, h, L.bhh, 0, gh, 0);
          for (let j = 0; j < H; j++) {
            const i = sigmoid(gi[j] + gh[j]);
            const f = sigmoid(gi[H + j] + gh[H + j]);
            const g = Math.tanh(gi[2 * H + j] + gh[2 * H + j]);
            const o = sigmoid(gi[3 * H + j] + gh[3 * H + j]);
            c[j] = f * c[j] + i * g;
            h[j] = o * Math.tanh(c[j]);
          }
        } else {
          matvec(L.whh, 0, H, H, h, L.bhh, 0, gh, 0);
          for (let j = 0; j < H; j++) h[j] = Math.tanh(gi[j] + gh[j]);
        }
        x = h;
      }
      matvec(this.headW, 0, this.V, H, x, this.headB, 0, this.logits, 0);
      return this.logits;
    }

    // The ids of text, or null and the characters the model has never seen.
    encode(text) {
      const ids = [], unknown = [];
      for (const ch of text) {
        const id = this.ids.get(ch);
        if (id === undefined) {
          if (!unknown.includes(ch)) unknown.push(ch);
        } else ids.push(id);
      }
      return unknown.length ? { ids: null, unknown: unknown.join("") } : { ids, unknown: "" };
    }
  }

  // softmax(logits / temperature) as a Float64Array.
  function softmax(logits, temperature) {
    let max = -Infinity;
    for (const v of logits) max = Math.max(max, v);
    const p = new Float64Array(logits.length);
    let sum = 0;
    for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp((logits[i] - max) / temperature);
    for (let i = 0; i < p.length; i++) p[i] /= sum;
    return p;
  }

  // The next character, as `gru-lm sample` draws it: argmax at temperature 0; else the softmax at the
  // temperature, kept to the most likely characters whose probabilities reach topP (a character is dropped
  // when the ones more likely than it already reach topP), drawn by inverting the cumulative sum with u.
  function pick(logits, temperature, topP, u) {
    if (temperature === 0) {
      let best = 0;
      for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
      return best;
    }
    const p = softmax(logits, temperature);
    if (topP < 1) {
      const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a]);
      let before = 0;
      for (const i of order) {
        const pi = p[i];
        if (before >= topP) p[i] = 0;
        before += pi;
      }
    }
    let total = 0;
    for (const v of p) total += v;
    const target = u * total;
    let cum = 0;
    for (let i = 0; i < p.length; i++) {
      cum += p[i];
      if (p[i] > 0 && cum > target) return i;
    }
    for (let i = p.length - 1; i >= 0; i--) if (p[i] > 0) return i; // rounding left u·total past the last sum
    return p.length - 1;
  }

  // sfc32, seeded through splitmix32 from the seed's low and high 32 bits: the same seed gives the same
  // uniforms in [0, 1) (53 bits each) in every browser.
  function random(seed) {
    let s = (seed % 4294967296) >>> 0, hi = Math.floor(seed / 4294967296) >>> 0;
    const mix = () => {
      s = (s + 0x9e3779b9) | 0;
      let t = s ^ (s >>> 16);
      t = Math.imul(t, 0x21f0aaad);
      t ^= t >>> 15;
      t = Math.imul(t, 0x735a2d97);
      return (t ^ (t >>> 15)) >>> 0;
    };
    s ^= Math.imul(hi, 0x85ebca6b);
    let a = mix(), b = mix(), c = mix(), d = mix();
    const next = () => {
      const t = (((a + b) | 0) + d) | 0;
      d = (d + 1) | 0;
      a = b ^ (b >>> 9);
      b = (c + (c << 3)) | 0;
      c = (c << 21) | (c >>> 11);
      c = (c + t) | 0;
      return t >>> 0;
    };
    for (let i = 0; i < 12; i++) next();
    return () => ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
  }

  root.GruLm = { Model, softmax, pick, random };
})(globalThis);
