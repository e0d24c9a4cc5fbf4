import { Router } from 'express';
import type { Services } from '../services.js';

/** BYOK import and export routes (issue 9). */
export function byokRoutes(_s: Services): Router {
  return Router();
}
