import { expect } from 'chai';
import { probeIndex } from '../helpers/index-probe.js';
import { TestStack } from '../helpers/stack.js';

describe('token object index built in the background (cold start on a large token)', function () {
  this.timeout(180_000);
  let stack: TestStack;
  before(async () => {
    stack = await TestStack.create({ name: 'token-index', tokens: ['index-probe'] });
  });
  after(() => stack.cleanup());

  it('the region is usable at once; a lookup the index does not hold yet waits for it; nothing destroyed comes back', () => {
    const r = probeIndex(stack, 'index-probe', 600);
    expect(r.atConnect).to.deep.equal({ available: true, indexedAll: false });
    expect(r.missWhileBuilding.waitable, 'a miss while building says to wait (no C_FindObjects per request)').to.equal(true);
    expect(r.afterWaiting.encrypts).to.equal(true);
    expect(r.built.listed).to.equal(600);
    expect(r.built.objectCount).to.be.at.least(600);
    expect(r.destroyedDuringBuild).to.deep.equal({ listed: false, exists: false });
  });
});
