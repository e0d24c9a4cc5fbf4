import type { Services } from '../api/services.js';
import type { XksConfig } from '../config/schema.js';

export interface XksServer {
  port: number;
  close(): Promise<void>;
}

/** AWS KMS External Key Store proxy listener (issue 10). */
export async function startXks(_config: XksConfig, s: Services): Promise<XksServer> {
  s.log.error('xks: the XKS proxy is not available in this build; the xks block is ignored');
  return { port: 0, close: async () => {} };
}
