/** parse-prometheus-text-format ships no types; the tests describe the families they read. */
declare module 'parse-prometheus-text-format' {
  export default function parsePrometheusTextFormat(text: string): unknown[];
}
