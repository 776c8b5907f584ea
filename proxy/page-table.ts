import { PAGE_SIZE } from '../src/criu/index.js';

const PAGE = BigInt(PAGE_SIZE);
/** Pages per block: one block covers 2 MiB of a process's address space. */
const BLOCK_PAGES = 512;

/**
 * A number per page of a migrating tree, by (pid, virtual address). Lazy mode tracks every page of
 * the workload (a quarter million for 1 GiB), so values sit in typed-array blocks per 2 MiB of
 * address space: a hash-map entry per page cost tens of MiB and held the proxy and the cache above
 * their memory bound.
 */
export class PageTable {
  private readonly blocks = new Map<number, Map<number, Float64Array>>();
  private count = 0;

  /** Pages holding a value. */
  get size(): number {
    return this.count;
  }

  get(pid: number, vaddr: bigint): number | undefined {
    const { block, slot } = this.locate(pid, vaddr, false);
    const value = block?.[slot];
    return value === undefined || Number.isNaN(value) ? undefined : value;
  }

  has(pid: number, vaddr: bigint): boolean {
    return this.get(pid, vaddr) !== undefined;
  }

  set(pid: number, vaddr: bigint, value: number): void {
    const { block, slot } = this.locate(pid, vaddr, true);
    if (Number.isNaN(block![slot]!)) this.count++;
    block![slot] = value;
  }

  delete(pid: number, vaddr: bigint): void {
    const { block, slot } = this.locate(pid, vaddr, false);
    if (!block || Number.isNaN(block[slot]!)) return;
    block[slot] = NaN;
    this.count--;
  }

  private locate(pid: number, vaddr: bigint, create: boolean): { block: Float64Array | undefined; slot: number } {
    // page numbers of user addresses stay below 2^53 (47- or 56-bit address spaces): exact as numbers
    const page = Number(vaddr / PAGE);
    const key = Math.floor(page / BLOCK_PAGES);
    let blocks = this.blocks.get(pid);
    if (!blocks && create) this.blocks.set(pid, (blocks = new Map()));
    let block = blocks?.get(key);
    if (!block && create) blocks!.set(key, (block = new Float64Array(BLOCK_PAGES).fill(NaN)));
    return { block, slot: page % BLOCK_PAGES };
  }
}
