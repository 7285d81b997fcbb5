import { LabIcon } from '@jupyterlab/ui-components';

const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M10 2.5a7.5 7.5 0 0 1 5.96 12.05l5.25 5.24a1 1 0 0 1-1.42 1.42l-5.24-5.25A7.5 7.5 0 1 1 10 2.5zm0 2a5.5 5.5 0 1 0 0 11 5.5 5.5 0 0 0 0-11z"/>
    <path d="M12.9 7.3a.9.9 0 0 1 .1 1.27l-3.2 3.8a.9.9 0 0 1-1.32.06l-1.6-1.6a.9.9 0 0 1 1.27-1.27l.9.9 2.58-3.06a.9.9 0 0 1 1.27-.1z"/>
  </g>
</svg>`;

export const torchReviewIcon = new LabIcon({ name: 'torchreview:icon', svgstr: svg });
