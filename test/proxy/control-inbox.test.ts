import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { LinkSession } from '../../src/link/session.js';
import { memoryTransportPair } from '../support/memory-link.js';
import { sendControl, ControlInbox, ChannelKind, openChannel } from '../../proxy/wire/index.js';

function connectedSessions(): { sender: LinkSession; inbox: ControlInbox } {
  const id = randomBytes(16);
  const sender = new LinkSession('dialer', id);
  const receiver = new LinkSession('listener', id);
  const inbox = new ControlInbox(receiver); // before anything arrives, as its users do
  const pair = memoryTransportPair();
  sender.attach(pair.a);
  receiver.attach(pair.b);
  return { sender, inbox };
}

describe('ControlInbox: waiting for what the peer says on its control channel', () => {
  it('gives each field whether it came before or after the wait, in order, and ends with the channel', async () => {
    const { sender, inbox } = connectedSessions();
    const control = openChannel(sender, ChannelKind.CONTROL, 'migration');
    await sendControl(control.writable, { images_stored: { ok: true, error: '' } });
    await expect(inbox.next('images_stored')).resolves.toEqual({ ok: true, error: '' });
    const restore = inbox.next('restore_result');
    await sendControl(control.writable, { restore_result: { ok: true, error: '', pid: 42 } });
    await expect(restore).resolves.toMatchObject({ ok: true, pid: 42 });
    control.writable.end();
    await inbox.ended;
    expect(inbox.messages.map((m) => Object.keys(m).find((k) => m[k as keyof typeof m]))).toEqual(['images_stored', 'restore_result']);
  });

  it('fails a wait for a message that can no longer come: channel ended, link aborted, or too late', async () => {
    const ended = connectedSessions();
    const control = openChannel(ended.sender, ChannelKind.CONTROL, 'migration');
    const waiting = ended.inbox.next('commit');
    control.writable.end();
    await expect(waiting).rejects.toThrow(/the peer ended its control channel/);

    const aborted = connectedSessions();
    openChannel(aborted.sender, ChannelKind.CONTROL, 'migration');
    const lost = aborted.inbox.next('commit');
    aborted.sender.abort('the source gave up');
    await expect(lost).rejects.toThrow(/the source gave up/);
    await expect(aborted.inbox.ended).rejects.toThrow(/the source gave up/);

    const slow = connectedSessions();
    await expect(slow.inbox.next('lazy_complete', 50)).rejects.toThrow(/did not send lazy_complete within 50 ms/);
  });

  it('fails a message sent on a channel of a session that has ended, instead of waiting for good', async () => {
    const { sender } = connectedSessions();
    const control = openChannel(sender, ChannelKind.CONTROL, 'migration');
    sender.abort('the source gave up');
    const sent = sendControl(control.writable, { images_stored: { ok: true, error: '' } });
    await expect(Promise.race([sent.then(() => 'sent', (error: Error) => error.message), sleep(2000).then(() => 'still waiting')])).resolves.toMatch(/the source gave up/);
  });
});
