import winston from 'winston';

/** Field names whose values never reach a log line. */
const SECRET_FIELDS = /^(authorization|token|pin|plaintext|keymaterial|importkeymaterial|wrappedkeymaterial|secret|secretaccesskey|input|aad|ciphertext|password)$/i;

const redact = winston.format((info) => {
  const scrub = (o: Record<string, unknown>, depth: number) => {
    for (const k of Object.keys(o)) {
      if (SECRET_FIELDS.test(k)) o[k] = '[redacted]';
      else if (depth < 4 && o[k] && typeof o[k] === 'object') scrub(o[k] as Record<string, unknown>, depth + 1);
    }
  };
  scrub(info as Record<string, unknown>, 0);
  return info;
});

/** Structured JSON logs on stdout, secrets redacted by field name. */
export function createLogger(level: string): winston.Logger {
  return winston.createLogger({
    level,
    defaultMeta: { pid: process.pid },
    format: winston.format.combine(redact(), winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Console()],
  });
}
