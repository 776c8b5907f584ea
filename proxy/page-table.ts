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
    return this.getPage(pid, pageOf(vaddr));
  }

  has(pid: number, vaddr: bigint): boolean {
    return this.getPage(pid, pageOf(vaddr)) !== undefined;
  }

  set(pid: number, vaddr: bigint, value: number): void {
    this.setPage(pid, pageOf(vaddr), value);
  }

  delete(pid: number, vaddr: bigint): void {
    this.deletePage(pid, pageOf(vaddr));
  }

  // By page number (the address over PAGE_SIZE), for loops over runs of pages: they count pages
  // as numbers, where an address per page would be a BigInt allocated per page.

  getPage(pid: number, page: number): number | undefined {
    const value = this.block(pid, page, false)?.[page % BLOCK_PAGES];
    return value === undefined || Number.isNaN(value) ? undefined : value;
  }

  setPage(pid: number, page: number, value: number): void {
    const block = this.block(pid, page, true)!;
    const slot = page % BLOCK_PAGES;
    if (Number.isNaN(block[slot]!)) this.count++;
    block[slot] = value;
  }

  deletePage(pid: number, page: number): void {
    const block = this.block(pid, page, false);
    const slot = page % BLOCK_PAGES;
    if (!block || Number.isNaN(block[slot]!)) return;
    block[slot] = NaN;
    this.count--;
  }

  private block(pid: number, page: number, create: boolean): Float64Array | undefined {
    const key = Math.floor(page / BLOCK_PAGES);
    let blocks = this.blocks.get(pid);
    if (!blocks && create) this.blocks.set(pid, (blocks = new Map()));
    let block = blocks?.get(key);
    if (!block && create) blocks!.set(key, (block = new Float64Array(BLOCK_PAGES).fill(NaN)));
    return block;
  }
}

/** The page number of an address: user addresses' stay below 2^53 (47- or 56-bit address spaces), exact as numbers. */
export function pageOf(vaddr: bigint): number {
  return Number(vaddr / PAGE);
}
