// The little of plotly.js the panel uses (the bundle ships no types; @types/plotly.js is large).
declare module 'plotly.js-dist-min' {
  export type Data = { [key: string]: unknown };
  export type Layout = { [key: string]: unknown };
  export type Config = { [key: string]: unknown };
  export function react(root: HTMLElement, data: Data[], layout?: Layout, config?: Config): Promise<HTMLElement>;
  export function purge(root: HTMLElement): void;
  export const Plots: { resize(root: HTMLElement): void };
}
