import { PAGE_SIZE } from '../src/criu/index.js';

const PAGE = BigInt(PAGE_SIZE);
/** Pages per block: one block covers 2 MiB of a process's address space. */
const BLOCK_PAGES = 512;

/**
 * A number per page of a migrating tree, by pid and page number (the address over PAGE_SIZE,
 * pageOf): loops over runs of pages count pages as numbers, where an address per page would be a
 * BigInt allocated per page. Lazy mode tracks every page of the workload (a quarter million for
 * 1 GiB), so values sit in typed-array blocks per 2 MiB of address space: a hash-map entry per page
 * cost tens of MiB and held the proxy and the cache above their memory bound.
 */
export class PageTable {
  private readonly blocks = new Map<number, Map<number, Float64Array>>();

  getPage(pid: number, page: number): number | undefined {
    const value = this.block(pid, page, false)?.[page % BLOCK_PAGES];
    return value === undefined || Number.isNaN(value) ? undefined : value;
  }

  setPage(pid: number, page: number, value: number): void {
    const block = this.block(pid, page, true)!;
    const slot = page % BLOCK_PAGES;
    block[slot] = value;
  }

  deletePage(pid: number, page: number): void {
    const block = this.block(pid, page, false);
    const slot = page % BLOCK_PAGES;
    if (!block || Number.isNaN(block[slot]!)) return;
    block[slot] = NaN;
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

/** The page number of an address: those of user addresses stay below 2^53 (47- or 56-bit address spaces), exact as numbers. */
export function pageOf(vaddr: bigint): number {
  return Number(vaddr / PAGE);
}
