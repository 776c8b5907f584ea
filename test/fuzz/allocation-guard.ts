/**
 * Watches the Buffer allocations made while one input is decoded. A decoder that believes a hostile
 * length field asks for that much memory at once (Buffer.alloc/allocUnsafe, which Buffer.concat also
 * uses): the guard refuses any single request over the bound before it is made, so a 4 GiB length
 * costs nothing here, and remembers it, so a decoder that catches and wraps the refusal is still
 * caught. Allocations through typed-array constructors are not seen.
 */
export class AllocationRefused extends Error {
  override readonly name = 'AllocationRefused';
}

type Allocator = (size: number, ...rest: never[]) => Buffer;
const PATCHED = ['alloc', 'allocUnsafe', 'allocUnsafeSlow'] as const;

export class AllocationGuard {
  private limit = Number.POSITIVE_INFINITY;
  private largest = 0;
  private total = 0;
  private refused: number | undefined;
  private readonly originals = new Map<(typeof PATCHED)[number], Allocator>();

  install(): void {
    if (this.originals.size > 0) return;
    for (const name of PATCHED) {
      const original = Buffer[name] as unknown as Allocator;
      this.originals.set(name, original);
      const guard = this;
      (Buffer as unknown as Record<string, Allocator>)[name] = function guardedAllocation(size: number, ...rest: never[]): Buffer {
        if (typeof size === 'number') {
          if (size > guard.limit) {
            guard.refused ??= size;
            throw new AllocationRefused(`an allocation of ${size} bytes, over the bound of ${guard.limit}`);
          }
          guard.total += size;
          if (size > guard.largest) guard.largest = size;
        }
        return original.call(Buffer, size, ...rest);
      };
    }
  }

  uninstall(): void {
    for (const [name, original] of this.originals) (Buffer as unknown as Record<string, Allocator>)[name] = original;
    this.originals.clear();
  }

  /** Starts watching one input, refusing any single allocation above `limit` bytes. */
  begin(limit: number): void {
    this.limit = limit;
    this.largest = 0;
    this.total = 0;
    this.refused = undefined;
  }

  /** What the input was given since begin(), and the first request refused; unbounded again until the next begin(). */
  end(): { largest: number; total: number; refused: number | undefined } {
    this.limit = Number.POSITIVE_INFINITY;
    return { largest: this.largest, total: this.total, refused: this.refused };
  }
}
