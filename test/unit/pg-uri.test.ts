import { expect } from 'chai';
import { parseMultiHostUri } from '../../src/store/postgres/postgres-store.js';

describe('unit: store.postgres.uri (libpq multi-host form)', () => {
  it('reads every host in order, the user, database and target_session_attrs', () => {
    const p = parseMultiHostUri('postgresql://kmsd@10.0.0.1:5432,10.0.0.2:6543/kmsd?target_session_attrs=read-write');
    expect(p.hosts).to.deep.equal([
      { host: '10.0.0.1', port: 5432 },
      { host: '10.0.0.2', port: 6543 },
    ]);
    expect(p.base.user).to.equal('kmsd');
    expect(p.base.database).to.equal('kmsd');
    expect(p.readWrite).to.equal(true);
  });

  it('defaults the port to 5432, read-write unless target_session_attrs=any; decodes a password', () => {
    const p = parseMultiHostUri('postgres://u:p%40ss@db.example/meta?target_session_attrs=any');
    expect(p.hosts).to.deep.equal([{ host: 'db.example', port: 5432 }]);
    expect(p.base.password).to.equal('p@ss');
    expect(p.readWrite).to.equal(false);
  });

  it('refuses what is not a postgresql:// URI', () => {
    expect(() => parseMultiHostUri('mysql://x/y')).to.throw(/postgresql/);
  });
});
