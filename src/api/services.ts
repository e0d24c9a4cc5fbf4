import type { Logger } from 'winston';
import type { AuditLog } from '../audit/audit-log.js';
import type { PrincipalDirectory } from '../auth/principals.js';
import type { Clock } from '../clock.js';
import type { Config } from '../config/schema.js';
import type { CryptoService } from '../crypto/crypto-service.js';
import type { KeyService } from '../keys/key-service.js';
import type { RotationService } from '../rotation/rotation-service.js';
import type { RegionRegistry } from '../token/regions.js';
import type { Metrics } from '../metrics.js';
import type { ByokService } from '../byok/byok-service.js';
import type { StoreKind } from '../store/store.js';

export interface Readiness {
  /** Which metadata store serves this daemon (named by /readyz). */
  storeKind: StoreKind;
  store(): Promise<boolean>;
  mongodb(): boolean;
}

/** Everything the HTTP layer may call; built by the composition root. */
export interface Services {
  config: Config;
  log: Logger;
  clock: Clock;
  keys: KeyService;
  crypto: CryptoService;
  rotation: RotationService;
  byok: ByokService;
  audit: AuditLog;
  principals: PrincipalDirectory;
  regions: RegionRegistry;
  metrics: Metrics;
  readiness: Readiness;
  advanceClock(seconds: number): Promise<void>;
}
