/**
 * Reads a file of JSON lines that other processes (hooks) may be appending to as we read: the
 * text after the last newline is a line still being written, not a whole record yet, and waits
 * for the next look.
 */
import { existsSync, readFileSync } from 'node:fs';

export function readJsonLines<T>(file: string): T[] {
  if (!existsSync(file)) return [];
  const text = readFileSync(file, 'utf8');
  return text
    .slice(0, text.lastIndexOf('\n') + 1)
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as T);
}
