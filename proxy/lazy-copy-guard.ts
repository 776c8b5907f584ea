import type { RestoredTree } from '../src/criu/index.js';
import type { LinkSession } from '../src/link/index.js';

/**
 * Keeps a lazily restored copy in step with the link its missing pages come over. The source
 * resumes its own copy if the link does not come back, so while the link is down the restored
 * tree is held stopped (SIGSTOP) and the two never run at once; it runs again when the link
 * re-attaches. Lost for good before every page arrived, the tree is ended first and `onLost` runs
 * after (it ends the lazy-pages daemon: a fault with no daemon behind it would read a missing page
 * as zeroes). Actions run one after another, in the order the link's events came.
 */
export class LazyCopyGuard {
  private holding = Promise.resolve();
  private readonly detached = (): void => this.act((tree) => tree.pause());
  private readonly attached = (): void => this.act((tree) => tree.resume());
  private readonly lost = (error: Error): void => {
    this.act((tree) => tree.kill());
    this.holding.then(() => this.onLost(error)).catch(() => {}); // onLost kills a process: nothing to report
  };

  /** `tree`: the restored tree, once known (undefined until then: nothing to hold yet). */
  constructor(
    private readonly session: LinkSession,
    private readonly tree: () => RestoredTree | undefined,
    private readonly onLost: (error: Error) => void,
  ) {
    session.on('detached', this.detached).on('attached', this.attached).once('aborted', this.lost);
  }

  /** Holds the tree now if the link is already down (when the tree has just become known). */
  matchLink(): void {
    if (this.session.isOpen && !this.session.attached) this.detached();
  }

  /** Every page is here: losing the link no longer ends the tree (it may still be held stopped). */
  pagesComplete(): void {
    this.session.off('aborted', this.lost);
  }

  /** Stops following the link, once what it already asked for is done. */
  async release(): Promise<void> {
    this.pagesComplete();
    this.session.off('detached', this.detached).off('attached', this.attached);
    await this.holding;
  }

  private act(action: (tree: RestoredTree) => Promise<void>): void {
    this.holding = this.holding.then(() => {
      const tree = this.tree();
      return tree ? action(tree) : undefined;
    }).catch(() => {});
  }
}
