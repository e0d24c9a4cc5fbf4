import { unsupported } from '../errors.js';
import type { CreateKeyInput, Scope } from '../keys/key-service.js';
import type { KeyRecord } from '../keys/model.js';

/**
 * BYOK import and break-glass export (issue 9). Placeholder until that issue lands: every
 * entry point answers 400 UnsupportedOperation rather than pretending to work.
 */
export class ByokService {
  async createFromWrappingKey(_scope: Scope, _input: CreateKeyInput & { importKeyMaterial: string; hashFunction?: string }): Promise<KeyRecord> {
    throw unsupported('importKeyMaterial: BYOK import is not available yet');
  }
}
